"""Timestamps and records: string form, parsing, order, tombstones and TTL."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp

node_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
timestamps = st.builds(Timestamp, st.integers(0, 2**53 - 1), st.integers(0, 2**53 - 1), node_ids)


def test_string_form_is_plain_decimal() -> None:
    assert str(Timestamp(1700000000000, 7, "node-a")) == "1700000000000:7:node-a"


@given(timestamps)
def test_parse_inverts_string_form(ts: Timestamp) -> None:
    assert Timestamp.parse(str(ts)) == ts


@pytest.mark.parametrize(
    "text",
    ["", "1:2", "1:2:a:b", "x:0:a", "1:y:a", "1.5:0:a", "-1:0:a", "\u0661:0:a", "5:\u0661:a"],
)
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        Timestamp.parse(text)


def test_order_is_millis_then_counter_then_node_id() -> None:
    ordered = [
        Timestamp(1, 0, "b"),
        Timestamp(1, 1, "a"),
        Timestamp(1, 1, "b"),
        Timestamp(2, 0, "a"),
    ]
    shuffled = [ordered[2], ordered[0], ordered[3], ordered[1]]
    assert sorted(shuffled) == ordered


def test_tombstone_and_ttl_expiry() -> None:
    ts = Timestamp(1000, 0, "n")
    assert LWWRecord(None, ts).is_tombstone
    assert not LWWRecord(0, ts).is_tombstone
    record = LWWRecord("v", ts, ttl_ms=500)
    assert not record.expired(1500)
    assert record.expired(1501)
    assert not LWWRecord("v", ts).expired(10**15)
    assert ORMapRecord("v", ts, str(ts), ttl_ms=1).expired(1002)
