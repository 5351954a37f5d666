"""Each invariant check fails on the state that breaks it."""

from __future__ import annotations

from topgun.crdt import LWWRecord, Timestamp
from topgun.dst.invariants import InvariantChecker, WriteRecord


def ts(millis: int, counter: int = 0, node: str = "a") -> Timestamp:
    return Timestamp(millis, counter, node)


def write(key: str, value: object, stamp: Timestamp) -> WriteRecord:
    return WriteRecord("c1", "m", key, LWWRecord(value, stamp))


def kinds(checker: InvariantChecker, **state: object) -> set[str]:
    args: dict[str, object] = {
        "server_maps": {},
        "client_maps": {},
        "server_counter": None,
        "client_counters": {},
    }
    args.update(state)
    return {v.invariant for v in checker.check(**args)}  # type: ignore[arg-type]


def test_a_consistent_run_passes() -> None:
    checker = InvariantChecker()
    w = write("k", 1, ts(1))
    checker.wrote(w)
    checker.acknowledged(w)
    checker.stamped("a", ts(1))
    checker.stamped("a", ts(2))
    checker.increments = 3
    state = {"m": {"k": w.record}}
    assert not kinds(
        checker,
        server_maps=state,
        client_maps={"c1": state},
        server_counter=3,
        client_counters={"c1": 3},
    )


def test_divergent_replicas_break_convergence() -> None:
    checker = InvariantChecker()
    one, two = write("k", 1, ts(1)), write("k", 2, ts(2))
    checker.wrote(one)
    checker.wrote(two)
    found = kinds(
        checker, server_maps={"m": {"k": two.record}}, client_maps={"c1": {"m": {"k": one.record}}}
    )
    assert found == {"convergence"}


def test_an_acknowledged_write_missing_on_the_server_is_lost() -> None:
    checker = InvariantChecker()
    old, new = write("k", 1, ts(1)), write("k", 2, ts(5))
    for w in (old, new):
        checker.wrote(w)
    checker.acknowledged(new)
    assert kinds(checker, server_maps={"m": {"k": old.record}}) == {"acked-write-lost"}
    assert kinds(checker, server_maps={"m": {}}) == {"acked-write-lost"}


def test_a_value_nobody_wrote_is_a_resurrection() -> None:
    checker = InvariantChecker()
    removed = write("k", None, ts(3))
    checker.wrote(removed)
    ghost = LWWRecord("back", ts(4))
    assert kinds(checker, server_maps={"m": {"k": ghost}}) == {"resurrection"}


def test_a_clock_going_back_breaks_monotonicity() -> None:
    checker = InvariantChecker()
    checker.stamped("a", ts(5))
    checker.stamped("a", ts(5))
    assert kinds(checker) == {"hlc-monotonic"}


def test_counters_and_fencing_and_live_views() -> None:
    checker = InvariantChecker()
    checker.increments = 4
    assert kinds(checker, server_counter=4, client_counters={"c1": 3}) == {"counter"}
    checker = InvariantChecker()
    checker.fencing += [("l", 1), ("l", 3), ("l", 3)]
    assert kinds(checker) == {"fencing"}
    checker = InvariantChecker()
    assert kinds(checker, live_views=[("c1", "q", [("k", 1)], [])]) == {"live-query"}


def test_an_or_map_value_missing_on_a_client_breaks_or_convergence() -> None:
    checker = InvariantChecker()
    server = {"t": ["a", "b"], "empty": []}
    assert not kinds(checker, server_sets=server, client_sets={"c1": {"t": ["b", "a"]}})
    assert kinds(checker, server_sets=server, client_sets={"c1": {"t": ["a"]}}) == {
        "or-convergence"
    }
