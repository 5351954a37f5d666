"""HLC: now/update per PROTOCOL.md §2.1, drift policy, node id and timestamp validation."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topgun.crdt.hlc import (
    HLC,
    ClockDriftError,
    check_node_id,
    is_server_node_id,
    validate_timestamp,
)
from topgun.crdt.records import Timestamp

T0 = 1_700_000_000_000


def test_now_follows_the_wall_clock_and_resets_the_counter(clock: Any) -> None:
    hlc = HLC("node-a", clock)
    assert hlc.now() == Timestamp(T0, 0, "node-a")
    clock.advance(5)
    assert hlc.now() == Timestamp(T0 + 5, 0, "node-a")


def test_now_counts_up_when_the_clock_stalls_or_goes_back(clock: Any) -> None:
    hlc = HLC("node-a", clock)
    first = hlc.now()
    assert hlc.now() == Timestamp(T0, 1, "node-a")
    clock.advance(-1000)
    third = hlc.now()
    assert third == Timestamp(T0, 2, "node-a")
    assert first < third
    assert hlc.last == third


def test_restore_moves_only_forward_and_later_readings_sort_after_the_mark(clock: Any) -> None:
    hlc = HLC("node-b", clock)
    mark = Timestamp(T0 + 60_000, 7, "node-a")  # an earlier run's reading, clock since behind
    hlc.restore(mark)
    assert hlc.last == Timestamp(T0 + 60_000, 7, "node-b")
    assert hlc.now() == Timestamp(T0 + 60_000, 8, "node-b")
    hlc.restore(Timestamp(T0, 0, "node-a"))  # an older mark changes nothing
    assert hlc.now() == Timestamp(T0 + 60_000, 9, "node-b")
    with pytest.raises(ValueError, match="millis"):
        hlc.restore(Timestamp(-1, 0, "node-a"))
    assert hlc.last == Timestamp(T0 + 60_000, 9, "node-b")


def test_now_many_gives_what_as_many_calls_of_now_give(clock: Any) -> None:
    one_by_one, at_once = HLC("node-a", clock), HLC("node-a", clock)
    for step, count in [(0, 3), (0, 2), (7, 1), (-5, 4), (1, 2)]:
        clock.advance(step)
        expected = [one_by_one.now() for _ in range(count)]
        assert at_once.now_many(count) == expected
        assert at_once.last == one_by_one.last
    assert at_once.now() == one_by_one.now()


def test_update_takes_the_remote_millis_when_it_is_ahead(clock: Any) -> None:
    hlc = HLC("node-a", clock)
    hlc.now()
    hlc.update(Timestamp(T0 + 10, 7, "node-b"))
    assert hlc.last == Timestamp(T0 + 10, 8, "node-a")
    assert hlc.now() == Timestamp(T0 + 10, 9, "node-a")


def test_update_with_equal_millis_takes_the_larger_counter(clock: Any) -> None:
    hlc = HLC("node-a", clock)
    clock.advance(-10)  # wall clock behind both
    hlc.update(Timestamp(T0, 3, "node-b"))  # last = (T0, 4)
    hlc.update(Timestamp(T0, 9, "node-c"))  # m == last.millis == remote.millis
    assert hlc.last == Timestamp(T0, 10, "node-a")
    hlc.update(Timestamp(T0, 1, "node-c"))
    assert hlc.last == Timestamp(T0, 11, "node-a")


def test_update_keeps_its_own_millis_when_the_remote_is_behind(clock: Any) -> None:
    hlc = HLC("node-a", clock)
    clock.advance(100)
    hlc.now()  # (T0+100, 0)
    clock.advance(-100)
    hlc.update(Timestamp(T0, 50, "node-b"))  # m == last.millis only
    assert hlc.last == Timestamp(T0 + 100, 1, "node-a")


def test_update_takes_the_wall_clock_when_it_is_ahead_of_both(clock: Any) -> None:
    hlc = HLC("node-a", clock)
    hlc.now()
    clock.advance(500)
    hlc.update(Timestamp(T0 + 10, 3, "node-b"))
    assert hlc.last == Timestamp(T0 + 500, 0, "node-a")


def test_drift_is_logged_and_accepted_by_default(
    clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hlc = HLC("node-a", clock, max_drift_ms=1000)
    with caplog.at_level(logging.WARNING, logger="topgun.crdt.hlc"):
        hlc.update(Timestamp(T0 + 1000, 0, "node-b"))  # exactly at the limit: fine
        assert not caplog.records
        hlc.update(Timestamp(T0 + 1001, 0, "node-b"))
    assert "clock drift" in caplog.text
    assert hlc.last == Timestamp(T0 + 1001, 1, "node-a")


def test_strict_mode_rejects_drift_and_leaves_the_clock_alone(clock: Any) -> None:
    hlc = HLC("node-a", clock, max_drift_ms=1000, strict=True)
    before = hlc.now()
    remote = Timestamp(T0 + 1001, 0, "node-b")
    with pytest.raises(ClockDriftError) as info:
        hlc.update(remote)
    assert str(info.value) == "Clock drift"
    assert info.value.remote == remote
    assert info.value.drift_ms == 1001
    assert hlc.last == before


@pytest.mark.parametrize("node_id", ["", "a:b", ":"])
def test_bad_node_ids_are_rejected(clock: Any, node_id: str) -> None:
    with pytest.raises(ValueError, match="node id"):
        HLC(node_id, clock)
    with pytest.raises(ValueError, match="node id"):
        check_node_id(node_id)


def test_node_id_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="str"):
        check_node_id(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("node_id", "ok"),
    [
        ("node-1", True),
        ("3f2a-9c", True),
        ("Node-1", False),
        ("node_1", False),
        ("", False),
        ("nöde", False),
    ],
)
def test_server_node_id_rule(node_id: str, ok: bool) -> None:
    assert is_server_node_id(node_id) is ok


@pytest.mark.parametrize("reading", [1.7e12, -1, "1700000000000", None, True])
def test_a_clock_that_does_not_return_int_millis_is_an_error(reading: object) -> None:
    hlc = HLC("node-a", lambda: reading)  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="clock must return"):
        hlc.now()


def test_constructor_validates_its_arguments(clock: Any) -> None:
    with pytest.raises(TypeError, match="callable"):
        HLC("node-a", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_drift_ms"):
        HLC("node-a", clock, max_drift_ms=-1)


@pytest.mark.parametrize(
    "ts",
    [
        Timestamp(-1, 0, "n"),
        Timestamp(0, -1, "n"),
        Timestamp(2**53, 0, "n"),
        Timestamp(1.5, 0, "n"),  # type: ignore[arg-type]
        Timestamp(True, 0, "n"),
        Timestamp(0, 0, "a:b"),
    ],
)
def test_malformed_remote_timestamps_are_rejected(clock: Any, ts: Timestamp) -> None:
    hlc = HLC("node-a", clock)
    with pytest.raises(ValueError, match="timestamp"):
        hlc.update(ts)
    with pytest.raises(ValueError, match="timestamp"):
        validate_timestamp(ts)
    assert hlc.last == Timestamp(0, 0, "node-a")


# A sequence of steps: ("now", wall clock) or ("update", wall clock, remote millis, counter).
steps = st.lists(
    st.one_of(
        st.tuples(st.just("now"), st.integers(0, 50)),
        st.tuples(st.just("update"), st.integers(0, 50), st.integers(0, 60), st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=150)
@given(steps)
def test_issued_timestamps_strictly_increase_and_follow_remotes(
    script: list[tuple[Any, ...]],
) -> None:
    wall = [0]
    hlc = HLC("node-a", lambda: wall[0], max_drift_ms=10**6)
    previous = hlc.last
    for step in script:
        wall[0] = step[1]
        if step[0] == "now":
            ts = hlc.now()
            assert ts > previous
            assert ts.millis >= wall[0]
            previous = ts
        else:
            remote = Timestamp(step[2], step[3], "node-b")
            hlc.update(remote)
            # Every later reading sorts after what was received.
            assert hlc.last > previous
            assert (hlc.last.millis, hlc.last.counter) > (remote.millis, remote.counter)
            previous = hlc.last
