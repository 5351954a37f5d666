"""Live queries on the server: windows, `QUERY_UPDATE` deltas and who gets each event
(PROTOCOL.md §6.2, §6.5).

Every map that has live queries gets one *view* per field-level-security filter its
subscribers read it through: an `IndexedMap` of the rows as those subscribers see them (with
the indexes the server configuration declares for the map, plus adaptive ones) and a
`topgun.query.LiveQueries` of their windows. Predicates and sorts run over the filtered rows,
so a query cannot probe fields its subscriber may not see, and every `QUERY_UPDATE` value is
already filtered. Views are built on the first subscription through them and kept in step
with every change the event router announces (writes, sync pushes, and any server-made change
announced the same way).

For each changed key, the work is proportional to the live queries it could affect (the
standing-query index of `LiveQueries`), never a re-run of every query. The same lookup says
which sessions the change's `SERVER_EVENT` goes to: those holding a live query on the map
whose filter matches the key's value before or after the change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from topgun.protocol import ChangeType, EventPayload, QueryUpdate, QueryUpdatePayload
from topgun.query import ABSENT, CompiledQuery, IndexedMap, IndexSpec, LiveQueries, QueryResult
from topgun.query.predicates import ALWAYS
from topgun.server.events import Recipient
from topgun.server.maps import MapRegistry
from topgun.server.permissions import WITHHELD, FieldFilter

SubId = tuple[Recipient, str]
"""A live query's identity: the session and its client-chosen `queryId`."""

Interest = dict[tuple[str, str], set[Recipient]]
"""(map, key) -> the sessions whose live queries match the key before or after a change."""

_CHANGE_TYPE: Final[dict[str, ChangeType]] = {
    "ENTER": "ENTER",
    "UPDATE": "UPDATE",
    "REMOVE": "LEAVE",
}


def current_value(maps: MapRegistry, map_name: str, key: str) -> Any:
    """The live row value of `key` in `map_name` (OR-Map: its live values), or `ABSENT`."""
    lww = maps.lww(map_name)
    if lww is not None:
        value = lww.get(key)
        return ABSENT if value is None else value
    ormap = maps.ormap(map_name)
    if ormap is None:
        return ABSENT
    values = ormap.values(key)
    return values if values else ABSENT


def live_items(maps: MapRegistry, map_name: str) -> list[tuple[str, Any]]:
    """Every live row of `map_name`, by key."""
    lww = maps.lww(map_name)
    if lww is not None:
        return sorted(lww.items())
    ormap = maps.ormap(map_name)
    return [] if ormap is None else [(k, ormap.values(k)) for k in sorted(ormap.keys())]


@dataclass(slots=True)
class _View:
    """One map as the subscribers with one field filter see it."""

    fields: FieldFilter
    rows: IndexedMap
    live: LiveQueries[SubId] = field(default_factory=LiveQueries)
    queries: dict[SubId, CompiledQuery] = field(default_factory=dict)

    def shown(self, value: Any) -> Any:
        if value is ABSENT:
            return ABSENT
        visible = self.fields.apply(value)
        return ABSENT if visible is WITHHELD else visible


class LiveQueryService:
    """Every live query of one server, with the per-map views they run over."""

    def __init__(
        self,
        maps: MapRegistry,
        *,
        encode: Callable[[msgspec.Struct], bytes],
        indexes: Mapping[str, Sequence[IndexSpec]] | None = None,
        adaptive_after: int | None = None,
    ) -> None:
        self.maps = maps
        self.encode = encode
        self.indexes: Mapping[str, Sequence[IndexSpec]] = indexes or {}
        """Map name -> the indexes declared for it in the server configuration."""
        self.adaptive_after = adaptive_after
        self._views: dict[str, dict[FieldFilter, _View]] = {}
        self._subs: dict[SubId, tuple[str, FieldFilter]] = {}
        self._outbox: list[tuple[Recipient, bytes]] = []

    def __len__(self) -> int:
        return len(self._subs)

    def rows(self, map_name: str, fields: FieldFilter) -> IndexedMap:
        """The indexed rows of `map_name` as `fields` shows them (built on first use)."""
        return self._view(map_name, fields).rows

    def _view(self, map_name: str, fields: FieldFilter) -> _View:
        views = self._views.setdefault(map_name, {})
        view = views.get(fields)
        if view is None:
            rows = IndexedMap(self.indexes.get(map_name, ()), adaptive_after=self.adaptive_after)
            view = views[fields] = _View(fields, rows)
            shown = ((key, view.shown(value)) for key, value in live_items(self.maps, map_name))
            rows.load((key, value) for key, value in shown if value is not ABSENT)
        return view

    def subscribe(
        self,
        session: Recipient,
        query_id: str,
        map_name: str,
        query: CompiledQuery,
        fields: FieldFilter,
        *,
        now_ms: int,
    ) -> QueryResult:
        """Answer and hold `query` (replacing the session's query with the same id);
        returns the `QUERY_RESP` page."""
        sub_id = (session, query_id)
        self.unsubscribe(session, query_id)
        view = self._view(map_name, fields)
        result = view.live.subscribe(sub_id, map_name, query, view.rows, now_ms=now_ms)
        view.queries[sub_id] = query
        self._subs[sub_id] = (map_name, fields)
        return result

    def unsubscribe(self, session: Recipient, query_id: str) -> None:
        """End one live query; unknown ids are ignored."""
        sub_id = (session, query_id)
        found = self._subs.pop(sub_id, None)
        if found is None:
            return
        map_name, fields = found
        views = self._views[map_name]
        view = views[fields]
        view.live.unsubscribe(sub_id)
        del view.queries[sub_id]
        if not view.queries:
            # Nobody reads through this view any more: stop maintaining it.
            del views[fields]
            if not views:
                del self._views[map_name]

    def drop(self, session: Recipient) -> None:
        """End every live query of `session` (it disconnected)."""
        for sub_id in [s for s in self._subs if s[0] is session]:
            self.unsubscribe(*sub_id)

    def changed(self, events: Iterable[EventPayload]) -> Interest:
        """Bring every view up to date with the changed keys of `events`, queue the
        `QUERY_UPDATE`s they cause (`flush` sends them), and return which sessions' queries
        match each key."""
        interest: Interest = {}
        passing: dict[tuple[str, str], list[Any]] = {}
        for event in events:
            if event.map_name not in self._views:
                continue
            values = passing.setdefault((event.map_name, event.key), [])
            if event.record is not None and event.record.value is not None:
                values.append(event.record.value)
        for (map_name, key), values in passing.items():
            views = self._views[map_name]
            matching = interest[(map_name, key)] = set()
            value = current_value(self.maps, map_name, key)
            ormap = self.maps.ormap(map_name) is not None
            for view in list(views.values()):
                if ormap:
                    # Attribute lookups on an OR-Map row find nothing (§6.5): every live
                    # query on the map hears of every change.
                    matching.update(session for session, _ in view.queries)
                else:
                    self._route(view, map_name, key, values, matching)
                self._apply(view, map_name, key, value)
        return interest

    def _route(
        self, view: _View, map_name: str, key: str, values: list[Any], matching: set[Recipient]
    ) -> None:
        """Add to `matching` the sessions of `view` with a query matching the key's value
        before the request or one of the values the request gave it. A query without a
        filter matches every key, even one removed before it ever had a value."""
        shown = [view.rows.get(key), *(view.shown(value) for value in values)]
        for value in shown:
            for sub_id in view.live.candidates(map_name, key, value):
                if sub_id[0] in matching:
                    continue
                predicate = view.queries[sub_id].predicate
                if predicate == ALWAYS or (value is not ABSENT and predicate.matches(value)):
                    matching.add(sub_id[0])

    def _apply(self, view: _View, map_name: str, key: str, value: Any) -> None:
        new = view.shown(value)
        if new is ABSENT:
            view.rows.delete(key)
        else:
            view.rows.set(key, new)
        for (session, query_id), changes in view.live.apply(map_name, key, view.rows):
            if not session.is_open:
                continue
            for change in changes:
                message = QueryUpdate(
                    payload=QueryUpdatePayload(
                        query_id=query_id,
                        key=change.key,
                        value=change.value,
                        type=change.type,
                        change_type=_CHANGE_TYPE[change.type],
                    )
                )
                self._outbox.append((session, self.encode(message)))

    def flush(self) -> None:
        """Send the `QUERY_UPDATE`s of the last `changed` (after the events they follow)."""
        outbox, self._outbox = self._outbox, []
        for session, frame in outbox:
            if session.is_open:
                session.send_frame(frame, "QUERY_UPDATE")
