"""Full-text search on the server: `SEARCH`, `SEARCH_SUB`, `SEARCH_UNSUB` (PROTOCOL.md §5.7,
§6.8).

A map's configuration (`[maps.<name>] search_fields`, `search_boosts`, `search_provider` or
`search_providers` with `search_weights`) enables search on it; providers come from the
`register_search_providers` hook (`bm25` is built in). With several providers, the map's index
is a `FusedIndex`: every provider ranks, and results are their reciprocal rank fusion
(k = 60, the configured weights). The map's index is built from its live rows on first use
and then fed every change the event router announces. Errors are answered the way §5.7
prescribes — a `SEARCH_RESP` with no results and an `error` — and a failed `SEARCH_SUB`
subscribes nothing. Every value sent (results and `SEARCH_UPDATE`s) is filtered by the
reader's field-level security; a document whose value is withheld from the reader is not sent
to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from topgun.hooks import PluginError, TopgunPluginManager, collect_registrations
from topgun.protocol import (
    EventPayload,
    ScoredRow,
    Search,
    SearchOptions,
    SearchResp,
    SearchRespPayload,
    SearchSub,
    SearchUnsub,
    SearchUpdate,
    SearchUpdatePayload,
)
from topgun.query import ABSENT
from topgun.search import (
    FusedIndex,
    LiveSearches,
    SearchError,
    SearchIndex,
    SearchProvider,
    SearchResult,
)
from topgun.server.config import MapOptions
from topgun.server.events import Recipient
from topgun.server.live import current_value, live_items
from topgun.server.maps import MapRegistry
from topgun.server.permissions import WITHHELD, FieldFilter

if TYPE_CHECKING:
    from topgun.server.session import Session

SubId = tuple[Recipient, str]
"""A live search's identity: the session and its `subscriptionId`."""


def search_providers(pm: TopgunPluginManager) -> dict[str, SearchProvider]:
    """Every registered search provider by name."""
    return {
        name: registration.obj
        for name, registration in collect_registrations(pm.hook.register_search_providers).items()
    }


class SearchService:
    """The search indexes of one server's maps and its live searches."""

    def __init__(
        self,
        maps: MapRegistry,
        options: Mapping[str, MapOptions],
        providers: Mapping[str, SearchProvider],
        *,
        encode: Callable[[msgspec.Struct], bytes],
    ) -> None:
        self.maps = maps
        self.options = {name: o for name, o in options.items() if o.search_fields}
        for name, found in options.items():
            for provider in found.providers:
                if provider not in providers:
                    known = ", ".join(sorted(providers)) or "none"
                    raise PluginError(
                        f"map {name!r} uses search provider {provider!r}, "
                        f"which no plugin registers (registered: {known})"
                    )
        self.providers = providers
        self.fusion: dict[str, list[tuple[SearchProvider, float]]] = {
            name: [
                (providers[provider], weight)
                for provider, weight in zip(found.providers, found.provider_weights, strict=True)
            ]
            for name, found in options.items()
            if len(found.providers) > 1
        }
        """The providers and weights of every map naming several (hybrid queries fuse them)."""
        self.encode = encode
        self.live: LiveSearches[SubId] = LiveSearches()
        self._indexes: dict[str, SearchIndex] = {}
        self._readers: dict[SubId, FieldFilter] = {}
        self._pinned: dict[SubId, str] = {}
        """Live search -> the map it keeps in memory (under a memory budget)."""

    def index(self, map_name: str) -> SearchIndex | None:
        """The search index of `map_name` (built on first use); `None` if search is off."""
        index = self._indexes.get(map_name)
        if index is None:
            found = self.options.get(map_name)
            if found is None:
                return None
            indexes = [self.providers[name](found.search_fields) for name in found.providers]
            index = self._indexes[map_name] = (
                indexes[0] if len(indexes) == 1 else FusedIndex(indexes, found.provider_weights)
            )
            for key, value in live_items(self.maps, map_name):
                index.set(key, value)
        return index

    async def ready(self, map_name: str) -> None:
        """Build the index of `map_name` if search is on for it and it is not built yet,
        with the map's cold values loaded for the time it takes."""
        if map_name in self.options and map_name not in self._indexes:
            async with self.maps.holding(map_name):
                self.index(map_name)

    def boost(self, map_name: str, requested: Mapping[str, float] | None) -> dict[str, float]:
        """The map's configured boosts, overridden field by field by the request's."""
        return {**self.options[map_name].search_boosts, **(requested or {})}

    def subscribe(
        self,
        session: Recipient,
        subscription_id: str,
        map_name: str,
        query: str,
        options: SearchOptions,
        fields: FieldFilter,
    ) -> SearchResult:
        """Start a live search (replacing one with the same id); `SearchError` on bad
        options. The map must have search enabled."""
        index = self.index(map_name)
        assert index is not None
        sub_id = (session, subscription_id)
        result = self.live.subscribe(
            sub_id,
            map_name,
            index,
            query,
            limit=options.limit,
            min_score=options.min_score,
            boost=self.boost(map_name, options.boost),
        )
        self._readers[sub_id] = fields
        self.maps.pin_map(map_name)  # a change can bring any row into the window
        replaced = self._pinned.pop(sub_id, None)
        if replaced is not None:
            self.maps.unpin_map(replaced)
        self._pinned[sub_id] = map_name
        return result

    def unsubscribe(self, session: Recipient, subscription_id: str) -> None:
        """Stop a live search; unknown ids are ignored."""
        sub_id = (session, subscription_id)
        self.live.unsubscribe(sub_id)
        self._readers.pop(sub_id, None)
        pinned = self._pinned.pop(sub_id, None)
        if pinned is not None:
            self.maps.unpin_map(pinned)

    def drop(self, session: Recipient) -> None:
        """Stop every live search of `session` (it disconnected)."""
        for sub_id in [s for s in self._readers if s[0] is session]:
            self.unsubscribe(*sub_id)

    def changed(self, events: Iterable[EventPayload]) -> None:
        """Feed the changed keys of `events` to their maps' indexes and send the
        `SEARCH_UPDATE`s of the live searches on those maps."""
        by_map: dict[str, dict[str, None]] = {}
        for event in events:
            if event.map_name in self._indexes:
                by_map.setdefault(event.map_name, {})[event.key] = None
        for map_name, keys in by_map.items():
            index = self._indexes[map_name]
            for key in keys:
                value = current_value(self.maps, map_name, key)
                if value is ABSENT:
                    index.delete(key)
                else:
                    index.set(key, value)

            def value_of(key: str, map_name: str = map_name) -> Any:
                return current_value(self.maps, map_name, key)

            for sub_id, changes in self.live.apply(map_name, keys, index, value_of):
                session, subscription_id = sub_id
                fields = self._readers[sub_id]
                if not session.is_open:
                    continue
                for change in changes:
                    value = None if change.value is None else fields.apply(change.value)
                    if value is WITHHELD:
                        continue
                    message = SearchUpdate(
                        payload=SearchUpdatePayload(
                            subscription_id=subscription_id,
                            key=change.key,
                            value=value,
                            score=change.score,
                            matched_terms=change.matched_terms,
                            type=change.type,
                            change_type=change.type,
                        )
                    )
                    session.send_frame(self.encode(message), "SEARCH_UPDATE")


def scored_rows(
    result: SearchResult | None, fields: FieldFilter, value_of: Callable[[str], Any]
) -> list[ScoredRow]:
    """The hits of `result` with their current values as `fields` shows them (hits whose
    value is gone or withheld are left out)."""
    rows: list[ScoredRow] = []
    if result is not None:
        for hit in result.hits:
            current = value_of(hit.key)
            value = WITHHELD if current is ABSENT else fields.apply(current)
            if value is not WITHHELD:
                rows.append(ScoredRow(hit.key, value, hit.score, hit.matched_terms))
    return rows


def _response(
    request_id: str,
    result: SearchResult | None,
    fields: FieldFilter,
    value_of: Callable[[str], Any],
) -> SearchResp:
    rows = scored_rows(result, fields, value_of)
    return SearchResp(
        payload=SearchRespPayload(
            request_id=request_id,
            results=rows,
            total_count=0 if result is None else result.total_count,
        )
    )


async def _refusal(session: Session, map_name: str) -> str | None:
    server = session.server
    principal = session.principal
    assert principal is not None
    if not server.security.is_allowed(principal, map_name, "READ"):
        return f"Access denied for map: {map_name}"
    await server.search.ready(map_name)
    if server.search.index(map_name) is None:
        return f"Full-text search not enabled for map: {map_name}"
    return None


def _failed(request_id: str, error: str) -> SearchResp:
    return SearchResp(
        payload=SearchRespPayload(request_id=request_id, results=[], total_count=0, error=error)
    )


async def search(session: Session, message: Search) -> None:
    """`SEARCH`: one ranked search → `SEARCH_RESP`."""
    server = session.server
    request = message.payload
    refusal = await _refusal(session, request.map_name)
    if refusal is not None:
        session.send(_failed(request.request_id, refusal))
        return
    index = server.search.index(request.map_name)
    assert index is not None
    assert session.principal is not None
    options = request.options or SearchOptions()
    try:
        result = index.search(
            request.query,
            limit=options.limit,
            min_score=options.min_score,
            boost=server.search.boost(request.map_name, options.boost),
        )
    except SearchError as bad:
        session.send(_failed(request.request_id, str(bad)))
        return
    fields = server.security.field_filter(session.principal, request.map_name)
    async with server.maps.holding(request.map_name, [hit.key for hit in result.hits]):
        session.send(
            _response(
                request.request_id,
                result,
                fields,
                lambda key: current_value(server.maps, request.map_name, key),
            )
        )


async def search_sub(session: Session, message: SearchSub) -> None:
    """`SEARCH_SUB`: start a live search; its first results are a `SEARCH_RESP` whose
    `requestId` is the `subscriptionId` (§6.8)."""
    server = session.server
    request = message.payload
    refusal = await _refusal(session, request.map_name)
    if refusal is not None:
        session.send(_failed(request.subscription_id, refusal))
        return
    assert session.principal is not None
    fields = server.security.field_filter(session.principal, request.map_name)
    try:
        async with server.maps.holding(request.map_name):  # pinned while it runs
            result = server.search.subscribe(
                session,
                request.subscription_id,
                request.map_name,
                request.query,
                request.options or SearchOptions(),
                fields,
            )
    except SearchError as bad:
        session.send(_failed(request.subscription_id, str(bad)))
        return
    session.send(
        _response(
            request.subscription_id,
            result,
            fields,
            lambda key: current_value(server.maps, request.map_name, key),
        )
    )


async def search_unsub(session: Session, message: SearchUnsub) -> None:
    """`SEARCH_UNSUB`: stop the live search (an unknown id is ignored)."""
    session.server.search.unsubscribe(session, message.payload.subscription_id)
