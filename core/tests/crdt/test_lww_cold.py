"""Cold LWW records (topgun/crdt/lww.py): evicted values keep their key, timestamp, TTL and
Merkle hash; reads of them fail loudly until `thaw` puts the value back."""

from __future__ import annotations

from typing import Any

import pytest

from topgun.crdt import COLD, HLC, ColdValueError, LWWMap, LWWRecord, Timestamp

T0 = 1_700_000_000_000


def rec(value: Any, millis: int, ttl: Any = None) -> LWWRecord:
    return LWWRecord(value, Timestamp(millis, 0, "n"), ttl)


def filled(clock: Any) -> LWWMap:
    m = LWWMap(HLC("local", clock))
    m.merge_many([("a", rec({"x": 1}, T0)), ("b", rec("two", T0 + 1)), ("gone", rec(None, T0))])
    return m


def test_evict_keeps_timestamp_and_merkle_hash_and_thaw_restores(clock: Any) -> None:
    m = filled(clock)
    root = m.merkle.root_hash
    heard: list[str] = []
    m.on_change(lambda key, record: heard.append(key))
    assert m.evict("a")
    assert not m.evict("a")  # already cold
    assert not m.evict("gone")  # tombstones stay
    assert not m.evict("missing")
    assert m.is_cold("a")
    assert m.cold_keys() == {"a"}
    cold = m.get_record("a")
    assert cold is not None
    assert cold.value is COLD
    assert cold.timestamp == Timestamp(T0, 0, "n")
    assert m.merkle.root_hash == root
    assert heard == []
    with pytest.raises(ColdValueError, match="'a'"):
        m.get("a")
    with pytest.raises(ColdValueError):
        m.items()
    assert m.get("b") == "two"
    assert m.thaw("a", rec({"x": 1}, T0))
    assert not m.thaw("a", rec({"x": 1}, T0))  # not cold any more
    assert m.get("a") == {"x": 1}
    assert sorted(m.items()) == [("a", {"x": 1}), ("b", "two")]
    assert m.cold_keys() == set()


def test_thaw_refuses_a_record_of_another_timestamp(clock: Any) -> None:
    m = filled(clock)
    m.evict("a")
    with pytest.raises(ValueError, match="evicted record was"):
        m.thaw("a", rec({"x": 0}, T0 - 5))
    with pytest.raises(ValueError, match="tombstone"):
        m.thaw("a", rec(None, T0))
    assert m.is_cold("a")


def test_merges_over_a_cold_record_compare_its_timestamp(clock: Any) -> None:
    m = filled(clock)
    m.evict("a")
    m.evict("b")
    assert not m.merge("a", rec("older", T0 - 1))
    assert m.is_cold("a")
    assert m.merge("a", rec("newer", T0 + 10))
    assert not m.is_cold("a")
    assert m.get("a") == "newer"
    assert m.merge_many([("b", rec("newer b", T0 + 10))]) == 1
    assert m.cold_keys() == set()
    m.set("c", 3)
    m.evict("c")
    m.set("c", 4)
    assert m.get("c") == 4
    assert m.cold_keys() == set()


def test_an_expired_cold_record_reads_as_absent_without_its_value(clock: Any) -> None:
    m = LWWMap(HLC("local", clock))
    m.merge("t", rec("v", T0, ttl=5))
    m.evict("t")
    clock.advance(10)
    assert m.get("t") is None
    assert m.items() == []
