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

Under a memory budget the index is built a chunk of the map at a time, and values are read
through the registry only to send them: a `SEARCH_RESP` loads its hits, and a
`SEARCH_UPDATE` whose document is cold waits (with the updates after it) until `settle`
loaded it. Nothing else of a document is kept outside the budget: the index holds its terms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from topgun.crdt import COLD, ColdValueError
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
from topgun.search.live import SearchChange
from topgun.server.config import MapOptions
from topgun.server.events import Recipient
from topgun.server.live import current_value, live_items
from topgun.server.maps import MapRegistry
from topgun.server.permissions import WITHHELD, FieldFilter
from topgun.server.views import Build, Outbox, is_cold, scan

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
        outbox: Outbox | None = None,
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
        self.outbox = Outbox(maps) if outbox is None else outbox
        """Where the `SEARCH_UPDATE`s go (the server's, shared with events)."""
        self._held: dict[SubId, list[tuple[str, str, Build] | bytes]] = {}
        """Updates of live searches whose `SEARCH_RESP` is not sent yet (`release`)."""
        self._building: dict[str, anyio.Event] = {}

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
        with the map's cold values loaded for the time it takes (under a memory budget, a
        chunk at a time)."""
        building = self._building.get(map_name)
        if building is not None:
            await building.wait()
        if map_name not in self.options or map_name in self._indexes:
            return
        if self.maps.hot is None:
            async with self.maps.holding(map_name):
                self.index(map_name)
            return
        found = self.options[map_name]
        indexes = [self.providers[name](found.search_fields) for name in found.providers]
        index = indexes[0] if len(indexes) == 1 else FusedIndex(indexes, found.provider_weights)
        done = self._building[map_name] = anyio.Event()
        self._indexes[map_name] = index  # fed every change while the chunks are read
        try:
            async for chunk in scan(self.maps, map_name):
                for key, value in chunk:
                    index.set(key, value)
        except BaseException:
            del self._indexes[map_name]
            raise
        finally:
            del self._building[map_name]
            done.set()

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
        *,
        hold_updates: bool = False,
    ) -> SearchResult:
        """Start a live search (replacing one with the same id); `SearchError` on bad
        options. The map must have search enabled. With `hold_updates`, its updates wait
        for `release` (the response is sent first)."""
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
        self._held.pop(sub_id, None)
        if hold_updates:
            self._held[sub_id] = []
        return result

    def release(self, session: Recipient, subscription_id: str) -> None:
        """Send the updates held back for a live search since `subscribe`."""
        for item in self._held.pop((session, subscription_id), ()):
            self._send(session, item)

    def _send(self, session: Recipient, item: tuple[str, str, Build] | bytes) -> None:
        if isinstance(item, bytes):
            self.outbox.put(session, item, "SEARCH_UPDATE")
        else:
            self.outbox.put_row(session, "SEARCH_UPDATE", *item)

    def unsubscribe(self, session: Recipient, subscription_id: str) -> None:
        """Stop a live search; unknown ids are ignored."""
        sub_id = (session, subscription_id)
        self.live.unsubscribe(sub_id)
        self._readers.pop(sub_id, None)
        self._held.pop(sub_id, None)

    def drop(self, session: Recipient) -> None:
        """Stop every live search of `session` (it disconnected)."""
        for sub_id in [s for s in self._readers if s[0] is session]:
            self.unsubscribe(*sub_id)

    def changed(self, events: Iterable[EventPayload]) -> None:
        """Feed the changed keys of `events` to their maps' indexes and send the
        `SEARCH_UPDATE`s of the live searches on those maps."""
        by_map: dict[str, dict[str, Any]] = {}
        for event in events:
            if event.map_name in self._indexes:
                record = event.record
                by_map.setdefault(event.map_name, {})[event.key] = (
                    ABSENT if record is None or record.value is None else record.value
                )
        budgeted = self.maps.hot is not None
        for map_name, keys in by_map.items():
            index = self._indexes[map_name]
            for key, sent in keys.items():
                try:
                    value = current_value(self.maps, map_name, key)
                except ColdValueError:  # evicted before its commit: what its change carried
                    value = sent
                if value is ABSENT:
                    index.delete(key)
                else:
                    index.set(key, value)

            def value_of(key: str, map_name: str = map_name) -> Any:
                if budgeted and is_cold(self.maps, map_name, key):
                    return COLD  # read when the update is sent
                return current_value(self.maps, map_name, key)

            for sub_id, changes in self.live.apply(map_name, keys, index, value_of):
                session, subscription_id = sub_id
                fields = self._readers[sub_id]
                if not session.is_open:
                    continue
                held = self._held.get(sub_id)
                for change in changes:
                    item: tuple[str, str, Build] | bytes | None
                    if change.value is COLD:
                        item = (map_name, change.key, self._later(subscription_id, change, fields))
                    else:
                        item = self._frame(subscription_id, change, change.value, fields)
                    if item is None:
                        continue
                    if held is not None:
                        held.append(item)
                    else:
                        self._send(session, item)

    def _frame(
        self, subscription_id: str, change: SearchChange, current: Any, fields: FieldFilter
    ) -> bytes | None:
        """The `SEARCH_UPDATE` of `change` with the document's value `current` as `fields`
        shows it; None if it is withheld."""
        value = None if current is None else fields.apply(current)
        if value is WITHHELD:
            return None
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
        return self.encode(message)

    def _later(self, subscription_id: str, change: SearchChange, fields: FieldFilter) -> Build:
        def build(current: Any) -> bytes | None:
            if current is ABSENT:
                return None  # gone meanwhile: its LEAVE follows
            return self._frame(subscription_id, change, current, fields)

        return build


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
        result = server.search.subscribe(
            session,
            request.subscription_id,
            request.map_name,
            request.query,
            request.options or SearchOptions(),
            fields,
            hold_updates=True,
        )
    except SearchError as bad:
        session.send(_failed(request.subscription_id, str(bad)))
        return
    try:
        async with server.maps.holding(request.map_name, [hit.key for hit in result.hits]):
            session.send(
                _response(
                    request.subscription_id,
                    result,
                    fields,
                    lambda key: current_value(server.maps, request.map_name, key),
                )
            )
    except BaseException:
        server.search.unsubscribe(session, request.subscription_id)  # nothing held
        raise
    server.search.release(session, request.subscription_id)


async def search_unsub(session: Session, message: SearchUnsub) -> None:
    """`SEARCH_UNSUB`: stop the live search (an unknown id is ignored)."""
    session.server.search.unsubscribe(session, message.payload.subscription_id)
