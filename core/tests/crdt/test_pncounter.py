"""PNCounter: per-node totals, validation, per-node-max merge and its laws."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topgun.crdt.pncounter import PNCounter


def test_increment_decrement_and_value() -> None:
    c = PNCounter("a")
    assert c.increment() == 1
    assert c.increment(4) == 5
    assert c.decrement(2) == 3
    assert c.decrement(0.5) == 2.5
    assert c.state == {"p": {"a": 5}, "n": {"a": 2.5}}


def test_state_is_a_copy() -> None:
    c = PNCounter("a")
    c.increment()
    c.state["p"]["a"] = 100
    assert c.value == 1


def test_zero_changes_store_nothing() -> None:
    c = PNCounter("a")
    c.increment(0)
    c.decrement(0)
    assert not c.merge(p={"b": 0}, n={"b": -0.0})
    assert c.state == {"p": {}, "n": {}}


@pytest.mark.parametrize("amount", [-1, math.inf, math.nan, True, "1", None])
def test_bad_amounts_are_rejected(amount: Any) -> None:
    c = PNCounter("a")
    with pytest.raises(ValueError, match="increment"):
        c.increment(amount)
    with pytest.raises(ValueError, match="decrement"):
        c.decrement(amount)
    with pytest.raises(ValueError, match=r"counter state p\['b'\]"):
        c.merge(p={"ok": 1, "b": amount})
    assert c.state == {"p": {}, "n": {}}  # nothing merged: validation comes first


def test_merge_rejects_malformed_state() -> None:
    c = PNCounter("a")
    with pytest.raises(ValueError, match="non-string node id"):
        c.merge(n={1: 2})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="map of node id"):
        c.merge(p=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="node id"):
        PNCounter("a:b")
    assert c.value == 0


def test_merge_takes_the_per_node_maximum() -> None:
    c = PNCounter("a")
    c.increment(3)
    assert c.merge(p={"a": 1, "b": 4}, n={"b": 2})
    assert c.state == {"p": {"a": 3, "b": 4}, "n": {"b": 2}}
    assert c.value == 5
    assert not c.merge(p={"a": 2, "b": 4})  # nothing grew
    assert c.increment() == 6  # local increments build on the merged own total


def test_float_totals_do_not_depend_on_merge_order() -> None:
    parts = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 1e16, "e": 1.0}
    forward, backward = PNCounter("x"), PNCounter("y")
    for node in parts:
        forward.merge(p={node: parts[node]})
    for node in reversed(parts):
        backward.merge(p={node: parts[node]})
    assert forward.value == backward.value == math.fsum(parts.values())


NODES = ["n1", "n2", "n3"]
amounts = st.one_of(st.integers(0, 50), st.floats(0, 50, allow_nan=False))
states = st.fixed_dictionaries(
    {
        "p": st.dictionaries(st.sampled_from(NODES), amounts),
        "n": st.dictionaries(st.sampled_from(NODES), amounts),
    }
)


def counter(*parts: dict[str, dict[str, float]]) -> PNCounter:
    c = PNCounter("r")
    for part in parts:
        c.merge(p=part["p"], n=part["n"])
    return c


@settings(max_examples=100)
@given(states, states, states)
def test_pn_merge_is_commutative_associative_idempotent(a: Any, b: Any, c: Any) -> None:
    def join(x: PNCounter, y: PNCounter) -> PNCounter:
        return counter(x.state, y.state)

    x, y, z = counter(a), counter(b), counter(c)
    assert join(x, y).state == join(y, x).state
    assert join(join(x, y), z).state == join(x, join(y, z)).state
    assert join(x, x).state == x.state


@settings(max_examples=60)
@given(st.lists(st.tuples(st.sampled_from(NODES), st.booleans(), amounts), max_size=15), st.data())
def test_replicas_converge_and_value_is_sum_p_minus_sum_n(
    changes: list[tuple[str, bool, float]], data: st.DataObject
) -> None:
    # Each node applies its own changes; the states it publishes along the way are
    # delivered to replicas in any order, with duplicates.
    nodes = {name: PNCounter(name) for name in NODES}
    published = []
    for name, up, amount in changes:
        (nodes[name].increment if up else nodes[name].decrement)(amount)
        published.append(nodes[name].state)
    final = counter(*(n.state for n in nodes.values()))
    for _ in range(2):
        order = data.draw(
            st.permutations(
                published + data.draw(st.lists(st.sampled_from(published or [final.state])))
            )
        )
        replica = counter(*order, *(n.state for n in nodes.values()))
        assert replica.state == final.state
        assert replica.value == final.value
    # The merged value is what every node counted: Σ increments − Σ decrements.
    counted = math.fsum(amount if up else -amount for _, up, amount in changes)
    assert final.value == pytest.approx(counted, abs=1e-9)
    p, n = final.state["p"], final.state["n"]
    assert final.value == pytest.approx(math.fsum(p.values()) - math.fsum(n.values()), abs=1e-9)
