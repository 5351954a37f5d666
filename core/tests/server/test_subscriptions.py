"""The subscription registry (topgun/server/subscriptions.py)."""

from __future__ import annotations

from topgun.protocol import Query
from topgun.server.subscriptions import Subscription, SubscriptionRegistry


def test_sessions_on_a_map_follow_adds_replacements_removals_and_drops() -> None:
    registry: SubscriptionRegistry[str] = SubscriptionRegistry()
    registry.add("s1", Subscription("q1", "m", Query()))
    registry.add("s1", Subscription("q2", "m", Query()))
    registry.add("s2", Subscription("q1", "m", Query()))
    assert registry.sessions_on("m") == ["s1", "s2"]
    registry.add("s1", Subscription("q1", "n", Query()))  # replaces s1's q1
    assert registry.sessions_on("n") == ["s1"]
    assert registry.remove("s1", "q2") is not None
    assert registry.sessions_on("m") == ["s2"]
    assert registry.remove("s1", "unknown") is None
    assert [s.query_id for s in registry.drop("s1")] == ["q1"]
    assert registry.sessions_on("n") == []
    assert registry.of("s1") == {}
    assert registry.drop("nobody") == []
