"""Live queries: window transitions per change (§6.5, P-35..P-37), checked against re-running
the query from scratch after every change (hypothesis), and the standing-query index."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from topgun.query import IndexedMap, IndexSpec, parse_query, run_query
from topgun.query.live import LiveQueries, WindowChange

NOW = 1_700_000_000_000


def table(rows: dict[str, Any], specs: tuple[IndexSpec, ...] = ()) -> IndexedMap:
    indexed = IndexedMap(specs)
    for key, value in rows.items():
        indexed.set(key, value)
    return indexed


def change(live: LiveQueries[str], rows: IndexedMap, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        rows.delete(key)
    else:
        rows.set(key, value)
    return dict(live.apply("m", key, rows))


def test_enter_update_remove_without_limit() -> None:
    rows = table({"a": {"done": False}, "b": {"done": True}})
    live: LiveQueries[str] = LiveQueries()
    first = live.subscribe("q", "m", parse_query({"where": {"done": False}}), rows, now_ms=NOW)
    assert [k for k, _ in first.rows] == ["a"]
    assert change(live, rows, "b", {"done": False}) == {
        "q": [WindowChange("ENTER", "b", {"done": False})]
    }
    assert change(live, rows, "b", {"done": False, "x": 1}) == {
        "q": [WindowChange("UPDATE", "b", {"done": False, "x": 1})]
    }
    assert change(live, rows, "a", {"done": True}) == {"q": [WindowChange("REMOVE", "a")]}
    assert change(live, rows, "b", None) == {"q": [WindowChange("REMOVE", "b")]}
    assert change(live, rows, "c", {"done": True}) == {}
    assert live.window("q") == []


def test_sorted_limit_window_displaces_and_refills() -> None:
    rows = table({f"k{i}": {"s": i} for i in range(6)}, (IndexSpec("sorted", ("s",)),))
    live: LiveQueries[str] = LiveQueries()
    query = parse_query({"sort": {"s": "desc"}, "limit": 3})
    live.subscribe("top", "m", query, rows, now_ms=NOW)
    assert live.window("top") == ["k5", "k4", "k3"]
    # a new best row displaces the last one: REMOVE first, then ENTER (P-37)
    assert change(live, rows, "new", {"s": 10}) == {
        "top": [WindowChange("REMOVE", "k3"), WindowChange("ENTER", "new", {"s": 10})]
    }
    # a leaving row is replaced by the next one
    assert change(live, rows, "k5", None) == {
        "top": [WindowChange("REMOVE", "k5"), WindowChange("ENTER", "k3", {"s": 3})]
    }
    # a row moving down past the end is swapped with the next one
    assert change(live, rows, "new", {"s": 0}) == {
        "top": [WindowChange("REMOVE", "new"), WindowChange("ENTER", "k2", {"s": 2})]
    }
    # a row moving inside the window is an UPDATE
    assert change(live, rows, "k2", {"s": 3.5}) == {
        "top": [WindowChange("UPDATE", "k2", {"s": 3.5})]
    }
    assert live.window("top") == ["k4", "k2", "k3"]
    # a row below the window changes nothing
    assert change(live, rows, "k0", {"s": -1}) == {}


def test_last_row_moving_down_stays_when_nothing_beats_it() -> None:
    rows = table({"a": {"s": 3}, "b": {"s": 2}, "c": {"s": 0}})
    live: LiveQueries[str] = LiveQueries()
    live.subscribe("q", "m", parse_query({"sort": {"s": "desc"}, "limit": 2}), rows, now_ms=NOW)
    assert change(live, rows, "b", {"s": 1}) == {"q": [WindowChange("UPDATE", "b", {"s": 1})]}
    assert change(live, rows, "b", {"s": -1}) == {
        "q": [WindowChange("REMOVE", "b"), WindowChange("ENTER", "c", {"s": 0})]
    }


def test_a_cursor_page_window_starts_after_the_cursor() -> None:
    rows = table({f"k{i}": {"s": i} for i in range(6)})
    first = run_query(parse_query({"sort": {"s": "asc"}, "limit": 2}), rows, now_ms=NOW)
    second = parse_query({"sort": {"s": "asc"}, "limit": 2, "cursor": first.next_cursor})
    live: LiveQueries[str] = LiveQueries()
    page = live.subscribe("p2", "m", second, rows, now_ms=NOW)
    assert page.cursor_status == "valid"
    assert live.window("p2") == ["k2", "k3"]
    assert change(live, rows, "early", {"s": 0.5}) == {}  # before the cursor: not this page
    assert change(live, rows, "mid", {"s": 2.5}) == {
        "p2": [WindowChange("REMOVE", "k3"), WindowChange("ENTER", "mid", {"s": 2.5})]
    }


def test_resubscribing_replaces_and_unsubscribing_stops() -> None:
    rows = table({"a": {"x": 1}})
    live: LiveQueries[str] = LiveQueries()
    live.subscribe("q", "m", parse_query({"where": {"x": 1}}), rows, now_ms=NOW)
    live.subscribe("q", "m", parse_query({"where": {"x": 2}}), rows, now_ms=NOW)
    assert len(live) == 1
    assert change(live, rows, "b", {"x": 1}) == {}
    assert change(live, rows, "c", {"x": 2}) == {"q": [WindowChange("ENTER", "c", {"x": 2})]}
    live.unsubscribe("q")
    live.unsubscribe("q")
    assert "q" not in live
    assert change(live, rows, "d", {"x": 2}) == {}
    assert live.candidates("m", "c", {"x": 2}) == set()


def test_standing_query_index_limits_the_queries_looked_at() -> None:
    rows = table({})
    live: LiveQueries[int] = LiveQueries()
    for i in range(1000):
        live.subscribe(i, "m", parse_query({"where": {"owner": f"u{i}"}}), rows, now_ms=NOW)
    live.subscribe(-1, "m", parse_query({"where": {"n": {"$gt": 5}}}), rows, now_ms=NOW)
    live.subscribe(-2, "other", parse_query({}), rows, now_ms=NOW)
    assert live.candidates("m", "k", {"owner": "u7", "n": 1}) == {7, -1}
    rows.set("k", {"owner": "u7", "n": 1})
    assert dict(live.apply("m", "k", rows)) == {
        7: [WindowChange("ENTER", "k", {"owner": "u7", "n": 1})]
    }
    # once in a window, a key reaches its query even when its new value leaves the bucket
    assert live.candidates("m", "k", {"owner": "u8"}) == {7, 8, -1}
    assert live.candidates("elsewhere", "k", {"owner": "u7"}) == set()


def test_changes_are_reported_in_subscription_order() -> None:
    rows = table({})
    live: LiveQueries[str] = LiveQueries()
    names = [f"s{i}" for i in range(20)]
    for name in reversed(names):
        live.subscribe(name, "m", parse_query({}), rows, now_ms=NOW)
    rows.set("k", 1)
    assert [sub for sub, _ in live.apply("m", "k", rows)] == list(reversed(names))


values = st.one_of(st.none(), st.integers(0, 4), st.sampled_from(["a", "b"]))
row_values = st.fixed_dictionaries({}, optional={"s": values, "c": st.sampled_from(["x", "y"])})
keys = st.text("abcdefg", min_size=1, max_size=2)
queries = st.fixed_dictionaries(
    {},
    optional={
        "where": st.sampled_from([{"c": "x"}, {"s": {"$gte": 1}}, {"c": "y", "s": {"$lt": 3}}]),
        "sort": st.sampled_from(
            [{"s": "asc"}, {"s": "desc"}, {"c": "asc", "s": "desc"}, {"_key": "desc"}]
        ),
        "limit": st.integers(1, 4),
    },
)


@settings(max_examples=120, deadline=None)
@given(
    initial=st.dictionaries(keys, row_values, max_size=12),
    wires=st.lists(queries, min_size=1, max_size=4),
    page_two=st.booleans(),
    changes=st.lists(st.tuples(keys, st.none() | row_values), max_size=25),
    indexed=st.booleans(),
)
def test_windows_match_a_fresh_run_after_every_change(
    initial: dict[str, Any],
    wires: list[dict[str, Any]],
    page_two: bool,
    changes: list[tuple[str, Any]],
    indexed: bool,
) -> None:
    specs = (IndexSpec("sorted", ("s",)), IndexSpec("hash", ("c",))) if indexed else ()
    rows = table(initial, specs)
    live: LiveQueries[int] = LiveQueries()
    clients: dict[int, dict[str, Any]] = {}
    starts = {}
    for i, wire in enumerate(wires):
        query = parse_query(wire)
        if page_two:
            first = run_query(query, rows, now_ms=NOW)
            if first.next_cursor:
                query = parse_query({**wire, "cursor": first.next_cursor})
        result = live.subscribe(i, "m", query, rows, now_ms=NOW)
        clients[i] = dict(result.rows)
        starts[i] = (query, result.start_after)
    for key, value in changes:
        if value is None:
            rows.delete(key)
        else:
            rows.set(key, value)
        for sub_id, updates in live.apply("m", key, rows):
            assert [u.type for u in updates] in (
                ["UPDATE"],
                ["ENTER"],
                ["REMOVE"],
                ["REMOVE", "ENTER"],
            )
            for update in updates:
                if update.type == "REMOVE":
                    assert update.key in clients[sub_id]
                    del clients[sub_id][update.key]
                else:
                    assert (update.type == "ENTER") is (update.key not in clients[sub_id])
                    clients[sub_id][update.key] = update.value
        for i, (query, start_after) in starts.items():
            fresh = sorted(
                (query.order_key(k, v), k, v)
                for k, v in rows.items()
                if query.matches(v) and (start_after is None or query.order_key(k, v) > start_after)
            )
            if query.limit is not None:
                fresh = fresh[: query.limit]
            assert clients[i] == {k: v for _, k, v in fresh}
            assert live.window(i) == [k for _, k, _ in fresh]
