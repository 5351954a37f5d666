"""Cold OR-Map keys (topgun/crdt/ormap.py): evicted values keep their tags, timestamps, TTLs,
tombstones and the key's Merkle hash; reading or changing them fails loudly, changing
nothing, until `thaw` puts the values back."""

from __future__ import annotations

from typing import Any

import pytest

from topgun.crdt import COLD, HLC, ColdValueError, ORMap, ORMapRecord, Timestamp

T0 = 1_700_000_000_000


def orec(value: Any, millis: int, ttl: Any = None) -> ORMapRecord:
    ts = Timestamp(millis, 0, "n")
    return ORMapRecord(value, ts, str(ts), ttl)


A1, A2, B1 = orec({"x": 1}, T0), orec("two", T0 + 1, 5000), orec([3], T0 + 2)


def filled(clock: Any) -> ORMap:
    m = ORMap(HLC("local", clock))
    for key, record in (("a", A1), ("a", A2), ("b", B1)):
        m.apply(key, record)
    m.apply("dead", orec("gone", T0 + 3))
    m.apply_tombstone(str(Timestamp(T0 + 3, 0, "n")))
    return m


def test_evict_keeps_tags_timestamps_and_merkle_hash_and_thaw_restores(clock: Any) -> None:
    m = filled(clock)
    root, leaf = m.merkle.root_hash, m.merkle.buckets("")
    heard: list[str] = []
    m.on_change(lambda key, tag, record: heard.append(key))
    assert m.evict("a")
    assert not m.evict("a")  # already cold
    assert not m.evict("dead")  # only tombstones: nothing to evict
    assert not m.evict("missing")
    assert m.is_cold("a")
    assert m.cold_keys() == {"a"}
    assert m.hash_strings("a") == []
    assert [(r.value, r.tag, r.ttl_ms) for r in m.records("a")] == [
        (COLD, A1.tag, None),
        (COLD, A2.tag, 5000),
    ]
    m.merkle.touch("a")  # even recomputed, the cold key hashes as before
    assert (m.merkle.root_hash, m.merkle.buckets("")) == (root, leaf)
    assert m.keys_holding(A1.tag) == ["a"]
    assert sorted(m.keys()) == ["a", "b"]  # liveness needs no value
    assert heard == []
    with pytest.raises(ColdValueError, match="'a'"):
        m.values("a")
    assert m.values("b") == [[3]]
    assert m.thaw("a", [A2, A1, orec("unrelated", T0 + 9)])
    assert not m.thaw("a", [A1, A2])  # not cold any more
    assert m.values("a") == [{"x": 1}, "two"]
    assert m.cold_keys() == set()
    m.merkle.touch("a")
    assert m.merkle.root_hash == root


def test_thaw_refuses_records_that_are_not_the_evicted_ones(clock: Any) -> None:
    m = filled(clock)
    m.evict("a")
    with pytest.raises(ValueError, match="does not hold record"):
        m.thaw("a", [A1])  # A2 missing
    with pytest.raises(ValueError, match="differ from the evicted"):
        m.thaw("a", [A1, ORMapRecord("changed", A2.timestamp, A2.tag, A2.ttl_ms)])
    assert m.is_cold("a")  # nothing changed
    assert m.thaw("a", [A1, A2])


def test_changing_a_cold_key_fails_before_anything_changes(clock: Any) -> None:
    m = filled(clock)
    m.evict("a")
    root = m.merkle.root_hash
    with pytest.raises(ColdValueError):
        m.apply("a", orec("new", T0 + 10))
    with pytest.raises(ColdValueError):
        m.apply_tombstone(A1.tag)
    with pytest.raises(ColdValueError):
        m.merge_entry("b", [], [A2.tag])  # a tombstone of a tag the cold key holds
    with pytest.raises(ColdValueError):
        m.remove("a", "two")
    with pytest.raises(ColdValueError):
        m.restore({"a": [orec("new", T0 + 11)]}, {})
    assert not m.is_tombstoned(A1.tag)
    assert not m.is_tombstoned(A2.tag)
    assert m.merkle.root_hash == root
    # What does not touch the cold key goes on.
    assert m.apply("b", orec("more", T0 + 12))
    assert m.apply_tombstone(B1.tag)
    m.thaw("a", [A1, A2])
    assert m.apply_tombstone(A1.tag)
    assert m.values("a") == ["two"]


def test_pruning_tombstones_leaves_a_cold_key_alone(clock: Any) -> None:
    m = filled(clock)
    m.evict("a")
    root = m.merkle.root_hash
    assert m.prune(Timestamp(T0 + 100, 0, "")) == [str(Timestamp(T0 + 3, 0, "n"))]
    assert m.is_cold("a")
    assert m.merkle.root_hash == root  # the dead key contributed nothing
    assert "dead" not in m.all_keys()
