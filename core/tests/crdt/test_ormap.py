"""ORMap: tagged adds, observed removes, tombstones, sync merges, hashing and merge laws."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topgun.crdt.hlc import HLC
from topgun.crdt.ormap import InvalidTagError, ORMap, same_value
from topgun.crdt.records import ORMapRecord, Timestamp

T0 = 1_700_000_000_000


def new_map(clock: Any) -> ORMap:
    return ORMap(HLC("local", clock))


def orec(
    value: Any, millis: int, counter: int = 0, node: str = "n", ttl: Any = None
) -> ORMapRecord:
    ts = Timestamp(millis, counter, node)
    return ORMapRecord(value, ts, str(ts), ttl)


def test_add_gives_each_record_a_tag_equal_to_its_timestamp(clock: Any) -> None:
    m = new_map(clock)
    first = m.add("k", "a")
    second = m.add("k", "a")
    assert first.tag == str(first.timestamp) == f"{T0}:0:local"
    assert second.tag == f"{T0}:1:local"
    assert m.values("k") == ["a", "a"]
    assert m.records("k") == [first, second]
    assert m.keys() == ["k"]


def test_remove_tombstones_every_observed_tag_with_an_equal_value(clock: Any) -> None:
    m = new_map(clock)
    one = m.add("k", {"n": 1})
    m.add("k", {"n": True})
    other = m.add("k", 2)
    assert m.remove("k", {"n": 1.0}) == [one.tag]
    assert m.values("k") == [{"n": True}, 2]
    assert m.is_tombstoned(one.tag)
    assert m.tombstones_of("k") == [one.tag]
    assert m.remove("k", "absent") == []
    assert m.remove("nokey", 2) == []
    assert m.remove("k", 2) == [other.tag]


def test_a_tombstoned_tag_is_never_re_added(clock: Any) -> None:
    m = new_map(clock)
    record = orec("v", T0)
    assert m.apply("k", record)
    assert not m.apply("k", record)  # already present
    assert m.apply_tombstone(record.tag)
    assert not m.apply_tombstone(record.tag)
    assert not m.apply("k", record)
    assert not m.apply("other-key", record)
    assert m.values("k") == []


def test_a_tombstone_that_arrives_first_blocks_the_later_add(clock: Any) -> None:
    m = new_map(clock)
    record = orec("v", T0 - 1)
    assert m.apply_tombstone(record.tag)
    assert not m.apply("k", record)
    assert m.records("k") == []
    assert m.tombstones == frozenset({record.tag})


def test_a_record_whose_tag_is_not_its_timestamp_is_rejected(clock: Any) -> None:
    m = new_map(clock)
    ts = Timestamp(T0, 0, "n")
    with pytest.raises(InvalidTagError, match="must equal its timestamp"):
        m.apply("k", ORMapRecord("v", ts, "something-else"))
    with pytest.raises(InvalidTagError, match="must equal its timestamp"):
        m.merge_entry("k", [ORMapRecord("v", ts, f"{T0}:1:n")], [])
    assert m.records("k") == []


@pytest.mark.parametrize(
    "tag", ["nope", "1:2", "NaN:1:A-node", "1:2:a:b", "-1:0:n", "05:1:n", "5:\u0661:n"]
)
def test_malformed_tombstone_tags_are_rejected(clock: Any, tag: str) -> None:
    m = new_map(clock)
    with pytest.raises(InvalidTagError, match="not an HLC string"):
        m.apply_tombstone(tag)
    with pytest.raises(InvalidTagError, match="not an HLC string"):
        m.merge_entry("k", [], [tag])
    with pytest.raises(InvalidTagError):
        m.merge_entry("k", [orec("v", T0)], [tag])
    assert m.records("k") == []
    assert m.tombstones == frozenset()


def test_bad_input_gets_clear_errors(clock: Any) -> None:
    m = new_map(clock)
    with pytest.raises(TypeError, match="key must be a str"):
        m.add(1, "v")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ORMapRecord"):
        m.apply("k", ("v", T0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot hash"):
        m.add("k", {1, 2})
    with pytest.raises(ValueError, match="ttl_ms"):
        m.add("k", "v", ttl_ms=-1)
    with pytest.raises(TypeError, match="tag must be a str"):
        m.apply_tombstone(5)  # type: ignore[arg-type]
    assert m.all_keys() == []


def test_apply_tombstone_removes_the_tag_from_whichever_key_holds_it(clock: Any) -> None:
    m = new_map(clock)
    record = orec("v", T0)
    m.apply("a", record)
    m.apply("b", orec("w", T0 + 1))
    assert m.apply_tombstone(record.tag)
    assert m.values("a") == []
    assert m.values("b") == ["w"]
    assert m.tombstones_of("a") == [record.tag]
    assert m.tombstones_of("b") == []


def test_concurrent_add_wins_over_remove(clock: Any) -> None:
    hlc_a, hlc_b = HLC("a", clock), HLC("b", clock)
    a, b = ORMap(hlc_a), ORMap(hlc_b)
    first = a.add("k", "x")
    b.apply("k", first)
    removed = a.remove("k", "x")  # a removes the tag it observed...
    again = b.add("k", "x")  # ...while b adds the value again with a new tag
    for tag in removed:
        b.apply_tombstone(tag)
    a.apply("k", again)
    assert a.values("k") == b.values("k") == ["x"]
    assert a.records("k") == b.records("k") == [again]


def test_apply_advances_the_clock(clock: Any) -> None:
    m = new_map(clock)
    m.apply("k", orec("v", T0 + 5000, 3, "remote"))
    assert m.add("k", "w").timestamp > Timestamp(T0 + 5000, 3, "remote")


def test_ttl_hides_expired_values_but_they_stay_hashed(clock: Any) -> None:
    m = new_map(clock)
    m.add("k", "short", ttl_ms=10)
    m.add("k", "long")
    root = m.merkle.root_hash
    clock.advance(11)
    assert m.values("k") == ["long"]
    assert [r.value for r in m.records("k")] == ["short", "long"]
    assert m.merkle.root_hash == root
    m.add("gone", "x", ttl_ms=1)
    clock.advance(2)
    assert m.keys() == ["k"]


def test_worked_example_root(clock: Any) -> None:
    m = new_map(clock)
    m.apply("tags:1", orec("work", T0, 0, "node-a"))
    m.apply("tags:1", orec({"b": 1, "a": {"z": 1, "b": 2}}, T0 + 1, 0, "node-b", ttl=60000))
    assert m.merkle.root_hash == 1574462118
    assert m.merkle.keys_at("ade") == ["tags:1"]


def test_dead_keys_stay_in_the_trie_with_hash_zero_until_pruned(clock: Any) -> None:
    m = new_map(clock)
    record = orec("v", T0 - 10)
    m.apply("tags:1", record)
    m.apply_tombstone(record.tag)
    assert m.merkle.root_hash == 0
    assert m.merkle.keys_at("ade") == ["tags:1"]  # a dead key still makes the leaf a LEAF
    assert m.merkle.buckets("ad") == {"e": 0}
    assert m.all_keys() == ["tags:1"]
    assert m.keys() == []
    assert m.prune(Timestamp(T0 - 10, 0, "")) == []  # not older than the horizon
    assert m.prune(Timestamp(T0, 0, "")) == [record.tag]
    assert m.merkle.keys_at("ade") == []
    assert m.merkle.buckets("ad") == {"e": 0}  # the node stays
    assert m.all_keys() == []
    assert not m.is_tombstoned(record.tag)


def test_prune_keeps_recent_tombstones(clock: Any) -> None:
    m = new_map(clock)
    old, new = orec("a", T0 - 10), orec("b", T0 + 10)
    m.apply("k", old)
    m.apply("k", new)
    m.apply_tombstone(old.tag)
    m.apply_tombstone(new.tag)
    m.apply_tombstone(f"{T0 - 20}:0:z")  # never seen: belongs to no key
    assert m.prune(Timestamp(T0, 0, "")) == [f"{T0 - 20}:0:z", old.tag]
    assert m.tombstones == frozenset({new.tag})
    assert m.tombstones_of("k") == [new.tag]


def test_merge_entry_reports_what_changed(clock: Any) -> None:
    m = new_map(clock)
    held, stale, fresh = orec("h", T0), orec("s", T0 + 1), orec("f", T0 + 2)
    m.apply("k", held)
    m.apply("k", stale)
    m.apply_tombstone(stale.tag)
    own = orec("o", T0 + 3)
    result = m.merge_entry("k", [stale, fresh, held, own], [held.tag, own.tag])
    assert result.tombstoned == [held.tag, own.tag]
    assert result.added == [fresh]
    assert result.stale == [stale]  # tombstoned before: the sender should be told
    assert m.values("k") == ["f"]
    assert m.tombstones_of("k") == [held.tag, stale.tag]
    again = m.merge_entry("k", [fresh], [held.tag])
    assert (again.added, again.tombstoned, again.stale) == ([], [], [])


def test_listeners_see_adds_and_removals(clock: Any) -> None:
    m = new_map(clock)
    seen: list[tuple[str, str, ORMapRecord | None]] = []
    unsubscribe = m.on_change(lambda key, tag, record: seen.append((key, tag, record)))
    added = m.add("k", "v")
    m.remove("k", "v")
    m.apply_tombstone(f"{T0}:9:x")  # held by no key: no event
    assert seen == [("k", added.tag, added), ("k", added.tag, None)]
    unsubscribe()
    m.add("k", "w")
    assert len(seen) == 2


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (1, True, False),
        (0, False, False),
        (None, None, True),
        ("1", 1, False),
        ({"a": [1, {"b": 2}]}, {"a": [1.0, {"b": 2}]}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ([1, 2], [2, 1], False),
        ([1], (1,), True),
        (b"x", bytearray(b"x"), True),
    ],
)
def test_same_value_is_json_value_equality(a: Any, b: Any, equal: bool) -> None:
    assert same_value(a, b) is equal
    assert same_value(b, a) is equal


# --- merge laws and convergence -------------------------------------------------------------

KEYS = ["a", "b", "c"]
timestamps = st.builds(
    Timestamp, st.integers(T0, T0 + 4), st.integers(0, 2), st.sampled_from(["n1", "n2"])
)


def add_op(key: str, ts: Timestamp) -> tuple[str, str, ORMapRecord]:
    return ("add", key, ORMapRecord(f"v{ts.millis % 2}", ts, str(ts)))


add_ops = st.builds(add_op, st.sampled_from(KEYS), timestamps)
op_lists = st.lists(
    st.one_of(add_ops, st.builds(lambda ts: ("remove", "", str(ts)), timestamps)), max_size=12
)


def run(ops: list[tuple[str, str, Any]]) -> ORMap:
    m = ORMap(HLC("r", lambda: T0 + 10))
    for kind, key, payload in ops:
        if kind == "add":
            m.apply(key, payload)
        else:
            m.apply_tombstone(payload)
    return m


def join(x: ORMap, y: ORMap) -> ORMap:
    """State-based merge through the sync entry point: all tombstones, then every key."""
    m = ORMap(HLC("r", lambda: T0 + 10))
    for source in (x, y):
        for tag in source.tombstones:
            m.apply_tombstone(tag)
        for key in source.all_keys():
            m.merge_entry(key, source.records(key), source.tombstones_of(key))
    return m


def state(m: ORMap) -> tuple[dict[str, list[ORMapRecord]], frozenset[str], int]:
    live = {k: m.records(k) for k in m.all_keys() if m.records(k)}
    return live, m.tombstones, m.merkle.root_hash


@settings(max_examples=100)
@given(op_lists, op_lists, op_lists)
def test_ormap_merge_is_commutative_associative_idempotent(
    a: list[tuple[str, str, Any]], b: list[tuple[str, str, Any]], c: list[tuple[str, str, Any]]
) -> None:
    x, y, z = run(a), run(b), run(c)
    assert state(join(x, y)) == state(join(y, x))
    assert state(join(join(x, y), z)) == state(join(x, join(y, z)))
    assert state(join(x, x)) == state(x)


@settings(max_examples=60)
@given(st.lists(add_ops, min_size=1, max_size=10), st.data())
def test_replicas_receiving_the_same_ops_in_any_order_converge(
    adds: list[tuple[str, str, Any]], data: st.DataObject
) -> None:
    removes = [("remove", "", r.tag) for _, _, r in data.draw(st.lists(st.sampled_from(adds)))]
    script = adds + removes
    replicas = [
        run(data.draw(st.permutations(script + data.draw(st.lists(st.sampled_from(script))))))
        for _ in range(3)
    ]
    for other in replicas[1:]:
        assert state(other) == state(replicas[0])
        assert {k: other.values(k) for k in KEYS} == {k: replicas[0].values(k) for k in KEYS}
    removed = {tag for _, _, tag in removes}
    assert all(r.tag not in removed for k in KEYS for r in replicas[0].records(k))


def test_restore_rebuilds_records_tombstones_and_dead_keys_without_events(clock: Any) -> None:
    """A map restored from a snapshot equals the map that was stored, dead keys included."""
    original = new_map(clock)
    kept = original.apply("a", orec("x", T0, 0))
    original.apply("a", orec("y", T0, 1))
    original.apply_tombstone(f"{T0}:1:n")
    original.apply("dead", orec("z", T0, 2))
    original.apply_tombstone(f"{T0}:2:n")
    original.apply_tombstone(f"{T0}:3:n")  # a tag no key held
    assert kept
    restored = new_map(clock)
    seen: list[object] = []
    restored.on_change(lambda *change: seen.append(change))
    newest = restored.restore(
        {"a": original.records("a"), "dead": []},
        {f"{T0}:1:n": "a", f"{T0}:2:n": "dead", f"{T0}:3:n": None},
    )
    assert newest == Timestamp(T0, 3, "n")
    assert seen == []
    assert restored.hlc.last == Timestamp(0, 0, "local")  # the clock is the owner's business
    assert restored.values("a") == ["x"]
    assert restored.tombstones_of("a") == [f"{T0}:1:n"]
    assert restored.tombstones_of("dead") == [f"{T0}:2:n"]
    assert restored.tombstones == original.tombstones
    assert sorted(restored.all_keys()) == ["a", "dead"]
    assert restored.merkle.root_hash == original.merkle.root_hash
    assert not restored.apply("a", orec("y", T0, 1))  # still tombstoned


def test_restore_leaves_out_records_whose_tags_are_tombstoned(clock: Any) -> None:
    m = new_map(clock)
    m.restore({"k": [orec("v", T0, 0), orec("w", T0, 1)]}, {f"{T0}:0:n": "k"})
    assert m.values("k") == ["w"]
    assert m.tombstones_of("k") == [f"{T0}:0:n"]


def test_restore_validates_everything_before_changing_anything(clock: Any) -> None:
    m = new_map(clock)
    bad = ORMapRecord("v", Timestamp(T0, 0, "n"), "not-the-tag")
    with pytest.raises(InvalidTagError):
        m.restore({"k": [orec("ok", T0, 1), bad]}, {})
    with pytest.raises(InvalidTagError):
        m.restore({"k": [orec("ok", T0, 1)]}, {"nonsense": "k"})
    with pytest.raises(TypeError, match="tombstone key"):
        m.restore({}, {f"{T0}:5:n": 7})  # type: ignore[dict-item]
    assert m.all_keys() == []
    assert m.tombstones == frozenset()


def test_keys_holding_names_the_keys_with_a_live_record_of_the_tag(clock: Any) -> None:
    m = new_map(clock)
    record = orec("v", T0, 0)
    assert m.keys_holding(record.tag) == []
    m.apply("a", record)
    m.apply("b", record)
    assert m.keys_holding(record.tag) == ["a", "b"]
    m.apply_tombstone(record.tag)
    assert m.keys_holding(record.tag) == []
