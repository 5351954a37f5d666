"""LWWMap: the strictly-newer merge rule, tombstones, TTL, prune, listeners, merge laws."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topgun.crdt.hlc import HLC, ClockDriftError
from topgun.crdt.lww import LWWMap
from topgun.crdt.records import LWWRecord, Timestamp

T0 = 1_700_000_000_000


def new_map(clock: Any, **kw: Any) -> LWWMap:
    return LWWMap(HLC("local", clock, **kw))


def rec(value: Any, millis: int, counter: int = 0, node: str = "n", ttl: Any = None) -> LWWRecord:
    return LWWRecord(value, Timestamp(millis, counter, node), ttl)


def test_set_get_and_remove(clock: Any) -> None:
    m = new_map(clock)
    written = m.set("a", {"x": 1})
    assert written.timestamp == Timestamp(T0, 0, "local")
    assert m.get("a") == {"x": 1}
    tombstone = m.remove("a")
    assert tombstone.value is None
    assert tombstone.timestamp > written.timestamp
    assert m.get("a") is None
    assert m.get_record("a") == tombstone
    assert m.get("missing") is None
    assert m.get_record("missing") is None


def test_remove_of_an_unknown_key_still_writes_a_tombstone(clock: Any) -> None:
    m = new_map(clock)
    tombstone = m.remove("ghost")
    assert m.get_record("ghost") == tombstone
    assert m.keys() == []


def test_merge_applies_only_strictly_newer_timestamps(clock: Any) -> None:
    m = new_map(clock)
    assert m.merge("k", rec("v1", T0, 1, "b"))
    assert not m.merge("k", rec("same-ts", T0, 1, "b"))  # equal: not applied
    assert not m.merge("k", rec("older", T0 - 1, 9, "z"))
    assert not m.merge("k", rec("lower counter", T0, 0, "z"))
    assert not m.merge("k", rec("lower node", T0, 1, "a"))
    assert m.get("k") == "v1"
    assert m.merge("k", rec("higher node", T0, 1, "c"))  # tie on millis, counter: node id
    assert m.merge("k", rec("higher counter", T0, 2, "a"))
    assert m.merge("k", rec("later", T0 + 1, 0, "a"))
    assert m.get("k") == "later"


def test_a_tombstone_is_not_overwritten_by_an_older_write(clock: Any) -> None:
    m = new_map(clock)
    m.merge("k", rec(None, T0 + 10))
    assert not m.merge("k", rec("stale", T0 + 5))
    assert m.get("k") is None
    assert m.merge("k", rec("newer", T0 + 11))  # a later value resurrects the key
    assert m.get("k") == "newer"


def test_merge_advances_the_clock_past_the_remote_timestamp(clock: Any) -> None:
    m = new_map(clock)
    remote = rec("v", T0 + 30_000, 4, "b")
    m.merge("k", remote)
    assert not m.merge("k", remote)  # a replay is not applied...
    local = m.set("k", "mine")  # ...and a local write after it wins
    assert local.timestamp > remote.timestamp
    assert m.get("k") == "mine"


def test_strict_mode_drift_leaves_the_map_unchanged(clock: Any) -> None:
    m = new_map(clock, max_drift_ms=1000, strict=True)
    with pytest.raises(ClockDriftError):
        m.merge("k", rec("v", T0 + 5000))
    assert m.get_record("k") is None
    with pytest.raises(ClockDriftError):
        m.merge_many([("a", rec("ok", T0)), ("b", rec("v", T0 + 5000))])
    assert m.records() == []


def test_ttl_hides_expired_values_by_the_injected_clock(clock: Any) -> None:
    m = new_map(clock)
    m.set("k", "v", ttl_ms=100)
    m.set("forever", "w")
    clock.advance(100)
    assert m.get("k") == "v"  # expired only once millis + ttl < now
    clock.advance(1)
    assert m.get("k") is None
    assert m.items() == [("forever", "w")]
    assert m.keys() == ["forever"]
    record = m.get_record("k")
    assert record is not None
    assert record.ttl_ms == 100  # the record is still there until the server converts it


@pytest.mark.parametrize("ttl", [0, -1, math.inf, math.nan, True, "10"])
def test_bad_ttl_is_rejected(clock: Any, ttl: Any) -> None:
    m = new_map(clock)
    with pytest.raises(ValueError, match="ttl_ms"):
        m.set("k", "v", ttl_ms=ttl)
    with pytest.raises(ValueError, match="ttl_ms"):
        m.merge("k", rec("v", T0, ttl=ttl))
    with pytest.raises(ValueError, match="ttl_ms"):
        m.merge_many([("k", rec("v", T0, ttl=ttl))])
    assert m.records() == []


def test_bad_input_gets_clear_errors(clock: Any) -> None:
    m = new_map(clock)
    with pytest.raises(ValueError, match="remove"):
        m.set("k", None)
    with pytest.raises(TypeError, match="key must be a str"):
        m.set(1, "v")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be a str"):
        m.remove(b"k")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="LWWRecord"):
        m.merge("k", {"value": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="millis"):
        m.merge("k", rec("v", -5))
    with pytest.raises(TypeError, match="key must be a str"):
        m.merge_many([(5, rec("v", T0))])  # type: ignore[list-item]
    assert m.records() == []


def test_merge_many_validates_everything_before_applying(clock: Any) -> None:
    m = new_map(clock)
    batch = [("a", rec("v", T0)), ("b", rec("v", T0, node="x:y")), ("c", rec("v", T0))]
    with pytest.raises(ValueError, match="node id"):
        m.merge_many(batch)
    assert m.records() == []
    with pytest.raises(ValueError, match="counter"):
        m.merge_many(iter([("a", rec("v", T0)), ("b", rec("v", T0, 2**53))]))
    with pytest.raises(ValueError, match="node id"):
        m.merge_many([("a", rec("v", T0, node=7))])  # type: ignore[arg-type]
    assert m.records() == []


def test_merge_many_applies_the_newest_and_counts(clock: Any) -> None:
    m = new_map(clock)
    m.set("a", "local")  # (T0, 0, local)
    batch = [
        ("a", rec("old", T0 - 1)),
        ("b", rec("b1", T0 + 1)),
        ("b", rec("b2", T0 + 2)),
        ("b", rec("b0", T0)),
        ("c", rec(None, T0 + 3)),
    ]
    assert m.merge_many(iter(batch)) == 3
    assert m.get("a") == "local"
    assert m.get("b") == "b2"
    assert m.get_record("c") == rec(None, T0 + 3)
    assert m.hlc.last > Timestamp(T0 + 3, 0, "n")
    assert m.merge_many([]) == 0


def test_listeners_see_every_stored_change_and_can_unsubscribe(clock: Any) -> None:
    m = new_map(clock)
    seen: list[tuple[str, LWWRecord]] = []
    unsubscribe = m.on_change(lambda key, record: seen.append((key, record)))
    a = m.set("a", 1)
    r = m.remove("a")
    assert not m.merge("a", rec("old", T0 - 5))
    b1, b2 = rec("x", T0 + 1), rec("y", T0 + 2)
    m.merge_many([("b", b1), ("b", b2), ("b", rec("z", T0))])
    assert seen == [("a", a), ("a", r), ("b", b1), ("b", b2)]
    unsubscribe()
    unsubscribe()  # idempotent
    m.set("c", 1)
    assert len(seen) == 4


def test_items_keys_and_records(clock: Any) -> None:
    m = new_map(clock)
    m.set("a", 1)
    m.set("b", 2)
    m.remove("b")
    assert m.items() == [("a", 1)]
    assert m.keys() == ["a"]
    assert [k for k, _ in m.records()] == ["a", "b"]


def test_prune_drops_only_old_tombstones_and_their_trie_items(clock: Any) -> None:
    m = new_map(clock)
    m.merge("old-value", rec("v", T0 - 100))
    m.merge("old-tomb", rec(None, T0 - 100))
    m.merge("new-tomb", rec(None, T0 + 100))
    root_before = m.merkle.root_hash
    assert m.prune(Timestamp(T0, 0, "")) == ["old-tomb"]
    assert m.get_record("old-tomb") is None
    assert m.get("old-value") == "v"
    assert m.get_record("new-tomb") is not None
    assert m.merkle.root_hash != root_before
    rebuilt = new_map(clock)
    rebuilt.merge_many(m.records())
    assert m.merkle.root_hash == rebuilt.merkle.root_hash
    assert m.prune(Timestamp(T0, 0, "")) == []


# --- merge laws and convergence -------------------------------------------------------------

KEYS = ["a", "b", "c", "d"]


def record_for(key: str, ts: Timestamp) -> LWWRecord:
    """One write per timestamp: the value is a function of (key, timestamp)."""
    if (ts.millis + ts.counter + len(ts.node_id)) % 3 == 0:
        return LWWRecord(None, ts)
    return LWWRecord(f"{key}@{ts}", ts)


timestamps = st.builds(
    Timestamp, st.integers(T0, T0 + 5), st.integers(0, 2), st.sampled_from(["n1", "n2", "n3"])
)
op = st.builds(lambda k, ts: (k, record_for(k, ts)), st.sampled_from(KEYS), timestamps)
ops = st.lists(op, max_size=12)


def replica(*batches: list[tuple[str, LWWRecord]]) -> LWWMap:
    m = LWWMap(HLC("r", lambda: T0 + 10))
    for batch in batches:
        for key, record in batch:
            m.merge(key, record)
    return m


def join(x: LWWMap, y: LWWMap) -> LWWMap:
    """State-based merge: a fresh replica that received both states."""
    return replica(x.records(), y.records())


def state(m: LWWMap) -> dict[str, LWWRecord]:
    return dict(m.records())


@settings(max_examples=100)
@given(ops, ops, ops)
def test_lww_merge_is_commutative_associative_idempotent(
    a: list[tuple[str, LWWRecord]],
    b: list[tuple[str, LWWRecord]],
    c: list[tuple[str, LWWRecord]],
) -> None:
    x, y, z = replica(a), replica(b), replica(c)
    assert state(join(x, y)) == state(join(y, x))
    assert state(join(join(x, y), z)) == state(join(x, join(y, z)))
    assert state(join(x, x)) == state(x)


@settings(max_examples=60)
@given(st.lists(op, min_size=1, max_size=12), st.data())
def test_replicas_receiving_the_same_ops_in_any_order_converge(
    script: list[tuple[str, LWWRecord]], data: st.DataObject
) -> None:
    replicas = []
    for use_batch in (False, True, False):
        delivery = data.draw(st.permutations(script + data.draw(st.lists(st.sampled_from(script)))))
        if use_batch:
            m = LWWMap(HLC("r", lambda: T0 + 10))
            m.merge_many(delivery)
        else:
            m = replica(delivery)
        replicas.append(m)
    first = replicas[0]
    for other in replicas[1:]:
        assert state(other) == state(first)
        assert other.merkle.root_hash == first.merkle.root_hash
        assert dict(other.items()) == dict(first.items())
