"""Who listens to which map: the live query subscriptions of every session.

A session's `QUERY_SUB` registers a `Subscription` under its `queryId` (a second one with
the same id replaces the first); `QUERY_UNSUB` and disconnect end it. Event routing asks
`sessions_on(map)` for the sessions holding at least one subscription on a map.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from topgun.protocol import Query

S = TypeVar("S", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Subscription:
    """One live query of one session."""

    query_id: str
    map_name: str
    query: Query


class SubscriptionRegistry(Generic[S]):
    """Subscriptions by session and by map, kept consistent with each other."""

    def __init__(self) -> None:
        self._by_session: dict[S, dict[str, Subscription]] = {}
        self._by_map: dict[str, dict[S, int]] = {}

    def add(self, session: S, subscription: Subscription) -> None:
        """Register `subscription`, replacing the session's one with the same query id."""
        queries = self._by_session.setdefault(session, {})
        previous = queries.get(subscription.query_id)
        if previous is not None:
            self._forget(session, previous)
        queries[subscription.query_id] = subscription
        holders = self._by_map.setdefault(subscription.map_name, {})
        holders[session] = holders.get(session, 0) + 1

    def remove(self, session: S, query_id: str) -> Subscription | None:
        """End the session's subscription `query_id`; `None` if it had none."""
        queries = self._by_session.get(session)
        if queries is None or query_id not in queries:
            return None
        subscription = queries.pop(query_id)
        if not queries:
            del self._by_session[session]
        self._forget(session, subscription)
        return subscription

    def drop(self, session: S) -> list[Subscription]:
        """End every subscription of `session` (it disconnected); returns them."""
        queries = self._by_session.pop(session, {})
        for subscription in queries.values():
            self._forget(session, subscription)
        return list(queries.values())

    def _forget(self, session: S, subscription: Subscription) -> None:
        holders = self._by_map[subscription.map_name]
        if holders[session] == 1:
            del holders[session]
            if not holders:
                del self._by_map[subscription.map_name]
        else:
            holders[session] -= 1

    def of(self, session: S) -> dict[str, Subscription]:
        """The session's subscriptions by query id (a copy)."""
        return dict(self._by_session.get(session, {}))

    def sessions_on(self, map_name: str) -> list[S]:
        """The sessions holding at least one subscription on `map_name`, in the order they
        first subscribed."""
        return list(self._by_map.get(map_name, ()))
