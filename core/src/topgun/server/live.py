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

Under a memory budget a view keeps, per row, only the attributes its queries' predicates and
sorts and its indexes read (`topgun.server.views.project`), counted in the budget: that is
all re-evaluating a row needs. Values are read through the registry when they are sent: a
`QUERY_RESP` loads its page, and a `QUERY_UPDATE` for a row that moved into a window while
cold waits in the outbox until `settle` loaded it. `prepare` builds (or widens) a view
before a subscription, reading the map a chunk at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import msgspec

from topgun.crdt import ColdValueError
from topgun.protocol import ChangeType, EventPayload, QueryUpdate, QueryUpdatePayload
from topgun.query import (
    ABSENT,
    CompiledQuery,
    IndexedMap,
    IndexSpec,
    LiveQueries,
    QueryResult,
    WindowChange,
)
from topgun.query.predicates import ALWAYS
from topgun.server.events import Recipient
from topgun.server.maps import MapRegistry
from topgun.server.permissions import WITHHELD, FieldFilter
from topgun.server.views import (
    Build,
    Charge,
    Outbox,
    current_value,
    project,
    query_fields,
    scan,
    shown_rows,
)

__all__ = ["Interest", "LiveQueryService", "SubId", "current_value", "live_items"]

SubId = tuple[Recipient, str]
"""A live query's identity: the session and its client-chosen `queryId`."""

Interest = dict[tuple[str, str], set[Recipient]]
"""(map, key) -> the sessions whose live queries match the key before or after a change."""

_CHANGE_TYPE: Final[dict[str, ChangeType]] = {
    "ENTER": "ENTER",
    "UPDATE": "UPDATE",
    "REMOVE": "LEAVE",
}


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
    keep: frozenset[str] | None = None
    """Under a memory budget: the attributes `rows` keep of each row (None: whole rows)."""
    charge: Charge | None = None
    """What `rows` keep, counted in the memory budget."""
    live: LiveQueries[SubId] = field(default_factory=LiveQueries)
    queries: dict[SubId, CompiledQuery] = field(default_factory=dict)
    preparing: int = 0
    """Subscriptions being prepared through this view: it stays while there are any."""

    def shown(self, value: Any) -> Any:
        if value is ABSENT:
            return ABSENT
        visible = self.fields.apply(value)
        return ABSENT if visible is WITHHELD else visible

    def put(self, key: str, shown: Any) -> None:
        """`key` now shows `shown` (`ABSENT`: not at all) to this view's subscribers."""
        row = shown if self.keep is None else project(shown, self.keep)
        if self.charge is not None:
            self.charge.change(self.rows.get(key), row)
        if row is ABSENT:
            self.rows.delete(key)
        else:
            self.rows.set(key, row)


def _kept(shown: Any, keep: frozenset[str] | None) -> Any:
    return shown if keep is None else project(shown, keep)


def _frame(encode: Callable[[msgspec.Struct], bytes], query_id: str, change: WindowChange) -> bytes:
    message = QueryUpdate(
        payload=QueryUpdatePayload(
            query_id=query_id,
            key=change.key,
            value=change.value,
            type=change.type,
            change_type=_CHANGE_TYPE[change.type],
        )
    )
    return encode(message)


class LiveQueryService:
    """Every live query of one server, with the per-map views they run over."""

    def __init__(
        self,
        maps: MapRegistry,
        *,
        encode: Callable[[msgspec.Struct], bytes],
        indexes: Mapping[str, Sequence[IndexSpec]] | None = None,
        adaptive_after: int | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.maps = maps
        self.encode = encode
        self.indexes: Mapping[str, Sequence[IndexSpec]] = indexes or {}
        """Map name -> the indexes declared for it in the server configuration."""
        self.adaptive_after = adaptive_after
        self._views: dict[str, dict[FieldFilter, _View]] = {}
        self._subs: dict[SubId, tuple[str, FieldFilter]] = {}
        self.outbox = Outbox(maps) if outbox is None else outbox
        """Where `flush` sends the updates (the server's, shared with events)."""
        self._frames: list[tuple[Recipient, bytes]] = []
        """Updates to send as they are (no memory budget)."""
        self._staged: list[tuple[Recipient, bytes | _Later]] = []
        """Updates to send through the outbox (under a memory budget)."""
        self._held: dict[SubId, list[tuple[Recipient, bytes | _Later]]] = {}
        """Updates of subscriptions whose `QUERY_RESP` is not sent yet (`release`)."""
        self._building = anyio.Lock()

    def __len__(self) -> int:
        return len(self._subs)

    def rows(self, map_name: str, fields: FieldFilter) -> IndexedMap:
        """The indexed rows of `map_name` as `fields` shows them (built on first use; under
        a memory budget, what the view keeps of them: build it with `prepare` first)."""
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

    def _needs(self, map_name: str, query: CompiledQuery) -> frozenset[str]:
        """The attributes a view must keep to run `query` and its indexes."""
        names = query_fields(query)
        for spec in self.indexes.get(map_name, ()):
            names.update(spec.fields)
        return frozenset(names)

    async def prepare(self, map_name: str, query: CompiledQuery, fields: FieldFilter) -> None:
        """Under a memory budget, build the view `query` will run over, or widen what it
        keeps, reading the map a chunk at a time (call `subscribe` right after, without
        awaiting). Without a budget this does nothing: `subscribe` builds the view."""
        if self.maps.hot is None:
            return
        need = self._needs(map_name, query)
        async with self._building:
            view = self._views.get(map_name, {}).get(fields)
            if view is not None and (view.keep is None or need <= view.keep):
                return
            before: frozenset[str] | None = None
            if view is None:
                rows = IndexedMap(
                    self.indexes.get(map_name, ()), adaptive_after=self.adaptive_after
                )
                view = _View(fields, rows, need, Charge(self.maps))
                self._views.setdefault(map_name, {})[fields] = view
            else:
                # Widened in place: the queries already on the view read only attributes
                # every row keeps all along; changes meanwhile are kept widened.
                before = view.keep or frozenset()  # (not None: returned above)
                view.keep = before | need
            view.preparing += 1
            try:
                await self._fill(view, map_name)
            except BaseException:
                if before is not None:
                    view.keep = before
                view.preparing -= 1
                self._forget_unused(map_name, fields)
                raise
            view.preparing -= 1  # `subscribe` follows at once

    async def _fill(self, view: _View, map_name: str) -> None:
        """Keep what `view.keep` says of every row, reading the map a chunk at a time."""
        rows, keep, charge = view.rows, view.keep, view.charge
        async for chunk in scan(self.maps, map_name):
            kept = []
            for key, value in chunk:
                row = _kept(view.shown(value), keep)
                if charge is not None:
                    charge.change(rows.get(key), row)
                if row is ABSENT:
                    rows.delete(key)
                else:
                    kept.append((key, row))
            rows.load(kept)

    def subscribe(
        self,
        session: Recipient,
        query_id: str,
        map_name: str,
        query: CompiledQuery,
        fields: FieldFilter,
        *,
        now_ms: int,
        hold_updates: bool = False,
    ) -> QueryResult:
        """Answer and hold `query` (replacing the session's query with the same id);
        returns the `QUERY_RESP` page (under a budget its rows hold what the view keeps:
        `values` gives what to send). With `hold_updates`, its `QUERY_UPDATE`s wait for
        `release` (the response is sent first)."""
        sub_id = (session, query_id)
        self.unsubscribe(session, query_id)
        view = self._view(map_name, fields)
        result = view.live.subscribe(sub_id, map_name, query, view.rows, now_ms=now_ms)
        view.queries[sub_id] = query
        self._subs[sub_id] = (map_name, fields)
        if hold_updates:
            self._held[sub_id] = []
        return result

    async def values(
        self, map_name: str, fields: FieldFilter, rows: Sequence[tuple[str, Any]]
    ) -> list[tuple[str, Any]]:
        """The rows of a page with the values `fields` shows (loaded a chunk at a time
        under a memory budget; a row removed meanwhile is left out: its `REMOVE` follows)."""
        view = self._views.get(map_name, {}).get(fields)
        if view is None or view.keep is None:
            return list(rows)
        return await shown_rows(self.maps, map_name, fields, [key for key, _ in rows])

    def release(self, session: Recipient, query_id: str) -> None:
        """Send the updates held back for a subscription since `subscribe` (its
        `QUERY_RESP` is out)."""
        self._send(self._held.pop((session, query_id), ()))

    def unsubscribe(self, session: Recipient, query_id: str) -> None:
        """End one live query; unknown ids are ignored."""
        sub_id = (session, query_id)
        self._held.pop(sub_id, None)
        found = self._subs.pop(sub_id, None)
        if found is None:
            return
        map_name, fields = found
        view = self._views[map_name][fields]
        view.live.unsubscribe(sub_id)
        del view.queries[sub_id]
        self._forget_unused(map_name, fields)

    def _forget_unused(self, map_name: str, fields: FieldFilter) -> None:
        """Nobody reads through this view any more: stop maintaining it."""
        views = self._views.get(map_name, {})
        view = views.get(fields)
        if view is None or view.queries or view.preparing:
            return
        del views[fields]
        if view.charge is not None:
            view.charge.release()
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
        # Under a budget: the keys whose changes the views have yet to apply.
        ahead = None if self.maps.hot is None else set(passing)
        for (map_name, key), values in passing.items():
            views = self._views[map_name]
            matching = interest[(map_name, key)] = set()
            if ahead is None:
                value = current_value(self.maps, map_name, key)
            else:
                ahead.discard((map_name, key))
                value = self._current(map_name, key, values)
            ormap = self.maps.ormap(map_name) is not None
            for view in list(views.values()):
                if ormap:
                    # Attribute lookups on an OR-Map row find nothing (§6.5): every live
                    # query on the map hears of every change.
                    matching.update(session for session, _ in view.queries)
                else:
                    self._route(view, map_name, key, values, matching)
                self._apply(view, map_name, key, value, ahead)
        return interest

    def _current(self, map_name: str, key: str, values: list[Any]) -> Any:
        """The value of a changed key; if it was evicted before its commit (a memory
        budget under a burst of writes), the value its latest change carried."""
        try:
            return current_value(self.maps, map_name, key)
        except ColdValueError:
            return values[-1] if values else ABSENT

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

    def _apply(
        self,
        view: _View,
        map_name: str,
        key: str,
        value: Any,
        ahead: set[tuple[str, str]] | None,
    ) -> None:
        """Apply the change of `key` to `value` to `view` and stage the updates it causes.
        `ahead`: the keys whose changes the view has not applied yet (under a budget)."""
        new = view.shown(value)
        view.put(key, new)
        if ahead is None:  # no budget: every frame is finished now, and sent as it is
            frames, encode = self._frames, self.encode
            for (session, query_id), changes in view.live.apply(map_name, key, view.rows):
                if session.is_open:
                    for change in changes:
                        frames.append((session, _frame(encode, query_id, change)))
            return
        for sub_id, changes in view.live.apply(map_name, key, view.rows):
            session, query_id = sub_id
            if not session.is_open:
                continue
            staged = self._held.get(sub_id, self._staged)
            for change in changes:
                item: bytes | _Later
                if change.type == "REMOVE":
                    item = _frame(self.encode, query_id, change)
                elif change.key == key:
                    item = _frame(self.encode, query_id, WindowChange(change.type, key, new))
                else:  # a row moving up into the window: its value is read when sent,
                    # as the view knows it (one the view has yet to apply: from storage)
                    stored = (map_name, change.key) in ahead
                    build = self._later(view, query_id, change)
                    item = _Later(map_name, change.key, build, stored)
                staged.append((session, item))

    def _later(self, view: _View, query_id: str, change: WindowChange) -> Build:
        def build(value: Any) -> bytes | None:
            shown = view.shown(value)
            if shown is ABSENT:
                return None  # gone meanwhile: its REMOVE follows
            return _frame(self.encode, query_id, WindowChange(change.type, change.key, shown))

        return build

    def flush(self) -> None:
        """Send the `QUERY_UPDATE`s of the last `changed` (after the events they follow)."""
        frames, self._frames = self._frames, []
        for session, frame in frames:
            if session.is_open:
                session.send_frame(frame, "QUERY_UPDATE")
        if self._staged:
            staged, self._staged = self._staged, []
            self._send(staged)

    def _send(self, items: Iterable[tuple[Recipient, bytes | _Later]]) -> None:
        put, put_row = self.outbox.put, self.outbox.put_row
        for session, item in items:
            if isinstance(item, _Later):
                put_row(
                    session, "QUERY_UPDATE", item.map_name, item.key, item.build, stored=item.stored
                )
            else:
                put(session, item, "QUERY_UPDATE")


@dataclass(frozen=True, slots=True)
class _Later:
    """A `QUERY_UPDATE` built from the value of (map_name, key) when it is sent."""

    map_name: str
    key: str
    build: Build
    stored: bool
    """Whether the value is the one storage holds (a change the view has yet to apply)."""
