"""Hybrid queries: a live query whose predicate may hold `match*` leaves, ranked by text
relevance (PROTOCOL.md §5.8).

`HYBRID_QUERY_SUBSCRIBE` needs READ on the map and a valid query. Rows are filtered like a
`QUERY_SUB` (over the values the subscriber's field-level security shows); a row's `score` is
the sum of the BM25 scores of the `match`, `matchPhrase` and `matchPrefix` leaves its value
satisfies (0 if none), each scored over that leaf's attribute; `sort` may name `_score` and
`_key`, and defaults to `_score desc, _key asc`. The answer is `HYBRID_QUERY_RESP`; after each
change to the map the window is computed again and compared: `LEAVE` for rows that left it,
`ENTER` for rows that entered, `UPDATE` for rows in both whose value changed or whose score
moved by more than 1e-4, each as `HYBRID_QUERY_DELTA` with both `type` and `changeType`.

On a map whose configuration names several search providers (`search_providers`), text
relevance is their reciprocal rank fusion instead (k = 60, `search_weights`): each provider
ranks the rows that pass the predicate by the sum of its scores of the `match*` leaves they
satisfy (BM25 as above; another provider by searching a per-attribute index of its own for
the leaf's query text, or a `matchPrefix`'s prefix), rows it scores 0 are left out of its
list, and a row's `score` is its fused score (0 if no provider ranks it); `matchedTerms` is the
union of the providers' terms.

Cost: the BM25 statistics of each scored attribute are kept up to date per change, but the
window is recomputed over the map's rows on every change to it (a linear pass per hybrid
subscription on that map). Cursors are not supported: a `cursor` is reported `invalid` and
the first page is answered; `hasMore` tells whether rows were cut by `limit`.

Under a memory budget a subscription keeps, for each row its predicate matches, only the
attributes its predicate, sort and `match*` leaves read (counted in the budget) and a hash
of the row's value (to tell an `UPDATE` of a value it no longer holds); it is built a chunk
of the map at a time, and values are read through the registry to send them: the response
loads its rows, and a delta whose row is cold waits until `settle` loaded it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from topgun.crdt import ColdValueError
from topgun.protocol import (
    ChangeType,
    EventPayload,
    HybridQueryDelta,
    HybridQueryDeltaPayload,
    HybridQueryResp,
    HybridQueryRespPayload,
    HybridQuerySubscribe,
    HybridQueryUnsubscribe,
    Query,
    ScoredRow,
)
from topgun.query import ABSENT, CompiledQuery, QueryError, parse_query
from topgun.query.predicates import And, Match, MatchPhrase, MatchPrefix, Not, Or, Predicate
from topgun.query.values import attribute, sort_key
from topgun.search import (
    SCORE_EPSILON,
    BM25Index,
    SearchIndex,
    SearchProvider,
    reciprocal_rank_fusion,
)
from topgun.server.events import Recipient
from topgun.server.live import Interest, current_value, live_items
from topgun.server.maps import MapRegistry
from topgun.server.permissions import WITHHELD, FieldFilter
from topgun.server.subscriptions import Subscription
from topgun.server.views import (
    Build,
    Charge,
    Outbox,
    predicate_fields,
    project,
    scan,
    shown_rows,
)

if TYPE_CHECKING:
    from topgun.server.session import Session

SubId = tuple[Recipient, str]
TextLeaf = Match | MatchPhrase | MatchPrefix
SCORE_FIELD = "_score"
KEY_FIELD = "_key"


def text_leaves(predicate: Predicate) -> Iterator[TextLeaf]:
    """Every `match*` leaf of `predicate` (under `not` too: a satisfied one still scores)."""
    if isinstance(predicate, Match | MatchPhrase | MatchPrefix):
        yield predicate
    elif isinstance(predicate, And | Or):
        for child in predicate.children:
            yield from text_leaves(child)
    elif isinstance(predicate, Not) and predicate.child is not None:
        yield from text_leaves(predicate.child)


def leaf_text(leaf: TextLeaf) -> str:
    """What a search provider other than BM25 is asked for a leaf: its query, or its prefix."""
    return leaf.prefix if isinstance(leaf, MatchPrefix) else leaf.query


@dataclass(slots=True)
class _Hit:
    value: Any
    score: float
    terms: list[str]


@dataclass(slots=True)
class _Ranker:
    """One provider of a fused hybrid query."""

    weight: float
    indexes: dict[str, SearchIndex] | None
    """One index per scored attribute; None for BM25, which is scored exactly as §5.8 says
    (from `_Hybrid.indexes`)."""


@dataclass(slots=True)
class _Hybrid:
    map_name: str
    query: CompiledQuery
    sort: list[tuple[str, bool]]
    """(field, descending), most significant first; ties end by `_key` ascending."""
    fields: FieldFilter
    leaves: list[TextLeaf]
    indexes: dict[str, BM25Index]
    """One BM25 index per scored attribute, over the values as `fields` shows them."""
    rankers: list[_Ranker] = field(default_factory=list)
    """Several: the map's providers, whose rankings are fused; none: the §5.8 BM25 sum."""
    window: dict[str, _Hit] = field(default_factory=dict)
    keep: frozenset[str] | None = None
    """Under a memory budget: the attributes `rows` keep (None: rows are read from the map
    on every change and the window holds whole values)."""
    rows: dict[str, Any] = field(default_factory=dict)
    """Under a memory budget: what `keep` holds of every row the predicate matches."""
    digests: dict[str, int] = field(default_factory=dict)
    """Under a memory budget: a hash of the shown value of every row in `rows`."""
    charge: Charge | None = None

    def shown(self, value: Any) -> Any:
        if value is ABSENT:
            return ABSENT
        visible = self.fields.apply(value)
        return ABSENT if visible is WITHHELD else visible

    def keep_row(self, key: str, value: Any) -> None:
        """Under a memory budget: hold what re-ranking needs of `key`'s shown `value`."""
        if self.keep is None:
            return
        old = self.rows.get(key, ABSENT)
        if value is not ABSENT and self.query.predicate.matches(value):
            row = project(value, self.keep)
            self.rows[key] = row
            self.digests[key] = _digest(value)
        else:
            row = ABSENT
            self.rows.pop(key, None)
            self.digests.pop(key, None)
        if self.charge is not None:
            self.charge.change(old, row)

    def feed(self, key: str, value: Any) -> None:
        indexes: list[Mapping[str, SearchIndex]] = [
            self.indexes,
            *(r.indexes for r in self.rankers if r.indexes is not None),
        ]
        for by_attribute in indexes:
            for name, index in by_attribute.items():
                if value is ABSENT:
                    index.delete(key)
                else:
                    index.set(key, {name: attribute(value, name)})

    def hit(self, key: str, value: Any) -> _Hit:
        score = 0.0
        terms: dict[str, None] = {}
        for leaf in self.leaves:
            if not leaf.matches(value):
                continue
            index = self.indexes[leaf.attribute]
            if isinstance(leaf, MatchPrefix):
                wanted = [t for t in index.terms_of(key) if t.startswith(leaf.prefix)]
            else:
                wanted = list(leaf.terms)
            score += index.scores(wanted).get(key, 0.0)
            terms.update(dict.fromkeys(index.matched_terms(key, wanted)))
        return _Hit(value, score, list(terms))

    def provider_scores(
        self, indexes: Mapping[str, SearchIndex], hits: Sequence[tuple[str, _Hit]]
    ) -> tuple[dict[str, float], dict[str, dict[str, None]]]:
        """One provider's scores (summed over the satisfied leaves) and matched terms."""
        scores: dict[str, float] = {}
        terms: dict[str, dict[str, None]] = {}
        for leaf in self.leaves:
            index = indexes[leaf.attribute]
            found = index.search(leaf_text(leaf), max_results=max(len(index), 1))
            ranked = {hit.key: hit for hit in found.hits}
            for key, row in hits:
                hit = ranked.get(key)
                if hit is not None and leaf.matches(row.value):
                    scores[key] = scores.get(key, 0.0) + hit.score
                    terms.setdefault(key, {}).update(dict.fromkeys(hit.matched_terms))
        return scores, terms

    def fuse(self, hits: list[tuple[str, _Hit]]) -> list[tuple[str, _Hit]]:
        """`hits` (BM25-scored) rescored by the RRF of every provider's ranking of them."""
        rankings: list[list[str]] = []
        terms: dict[str, dict[str, None]] = {}
        for ranker in self.rankers:
            if ranker.indexes is None:
                scores = {key: hit.score for key, hit in hits}
                for key, hit in hits:
                    terms.setdefault(key, {}).update(dict.fromkeys(hit.terms))
            else:
                scores, found = self.provider_scores(ranker.indexes, hits)
                for key, more in found.items():
                    terms.setdefault(key, {}).update(more)
            positive = [(-score, key) for key, score in scores.items() if score > 0]
            rankings.append([key for _, key in sorted(positive)])
        fused = dict(
            reciprocal_rank_fusion(rankings, weights=[ranker.weight for ranker in self.rankers])
        )
        return [
            (key, _Hit(hit.value, fused.get(key, 0.0), list(terms.get(key, {}))))
            for key, hit in hits
        ]

    def run(self, rows: Iterable[tuple[str, Any]]) -> tuple[list[tuple[str, _Hit]], bool]:
        """The window (in order) and whether `limit` cut rows off."""
        hits = [
            (key, self.hit(key, value))
            for key, value in rows
            if self.query.predicate.matches(value)
        ]
        if self.rankers:
            hits = self.fuse(hits)
        hits.sort(key=lambda item: item[0])
        for name, descending in reversed(self.sort):
            hits.sort(key=_by(name), reverse=descending)
        limit = self.query.limit
        if limit is not None and len(hits) > limit:
            return hits[:limit], True
        return hits, False


def _digest(value: Any) -> int:
    """A hash of `value` that equal values share (`==`: key order, 1 and 1.0)."""
    return hash(_frozen(value))


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return frozenset((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def _by(name: str) -> Callable[[tuple[str, _Hit]], Any]:
    """The sort key of one sort field: `_score`, `_key`, or an attribute (§7.1 order)."""

    def order(item: tuple[str, _Hit]) -> Any:
        key, hit = item
        if name == SCORE_FIELD:
            return hit.score
        if name == KEY_FIELD:
            return key
        return sort_key(attribute(hit.value, name))

    return order


class HybridQueries:
    """Every hybrid subscription of one server."""

    def __init__(
        self,
        maps: MapRegistry,
        *,
        encode: Callable[[msgspec.Struct], bytes],
        fusion: Mapping[str, Sequence[tuple[SearchProvider, float]]] | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.maps = maps
        self.encode = encode
        self.fusion = fusion or {}
        """The providers and weights of the maps whose text relevance is fused."""
        self._subs: dict[SubId, _Hybrid] = {}
        self._building: list[_Hybrid] = []
        """Subscriptions being built under a memory budget (fed every change meanwhile)."""
        self.outbox = Outbox(maps) if outbox is None else outbox
        """Where `flush` sends the deltas (the server's, shared with events)."""
        self._staged: list[tuple[Recipient, tuple[str, str, Build] | bytes]] = []
        self._held: dict[SubId, list[tuple[Recipient, tuple[str, str, Build] | bytes]]] = {}
        """Deltas of subscriptions whose response is not sent yet (`release`)."""

    def __len__(self) -> int:
        return len(self._subs)

    def _rows(self, hybrid: _Hybrid) -> list[tuple[str, Any]]:
        if hybrid.keep is not None:
            return list(hybrid.rows.items())
        shown = ((k, hybrid.shown(v)) for k, v in live_items(self.maps, hybrid.map_name))
        return [(k, v) for k, v in shown if v is not ABSENT]

    def _new(self, map_name: str, query: CompiledQuery, sort: Any, fields: FieldFilter) -> _Hybrid:
        order = [(name, direction == "desc") for name, direction in (sort or {}).items()]
        leaves = list(text_leaves(query.predicate))
        return _Hybrid(
            map_name,
            query,
            order or [(SCORE_FIELD, True)],
            fields,
            leaves,
            {leaf.attribute: BM25Index([leaf.attribute]) for leaf in leaves},
            [
                _Ranker(
                    weight,
                    None
                    if provider is BM25Index
                    else {leaf.attribute: provider([leaf.attribute]) for leaf in leaves},
                )
                for provider, weight in self.fusion.get(map_name, ())
            ],
        )

    async def subscribe(
        self,
        session: Recipient,
        sub_id: str,
        map_name: str,
        query: CompiledQuery,
        sort: Any,
        fields: FieldFilter,
    ) -> tuple[list[tuple[str, _Hit]], bool]:
        """Hold a hybrid query (replacing one with the same id); returns its first window.

        Under a memory budget the subscription is built a chunk of the map at a time and
        keeps only what re-ranking reads; its window's values are loaded to answer, and its
        deltas wait for `release`."""
        if self.maps.hot is not None:
            return await self._subscribe_budgeted(
                session, sub_id, self._new(map_name, query, sort, fields)
            )
        async with self.maps.holding(map_name):  # an archived map comes back
            hybrid = self._new(map_name, query, sort, fields)
            rows = self._rows(hybrid)
            for key, value in rows:
                hybrid.feed(key, value)
            return self._start(session, sub_id, hybrid, rows)

    def _start(
        self, session: Recipient, sub_id: str, hybrid: _Hybrid, rows: list[tuple[str, Any]]
    ) -> tuple[list[tuple[str, _Hit]], bool]:
        window, cut = hybrid.run(rows)
        hybrid.window = dict(window)
        self.unsubscribe(session, sub_id)
        self._subs[(session, sub_id)] = hybrid
        return window, cut

    async def _subscribe_budgeted(
        self, session: Recipient, sub_id: str, hybrid: _Hybrid
    ) -> tuple[list[tuple[str, _Hit]], bool]:
        map_name, fields = hybrid.map_name, hybrid.fields
        names = predicate_fields(hybrid.query.predicate)
        names.update(name for name, _ in hybrid.sort if name not in (SCORE_FIELD, KEY_FIELD))
        hybrid.keep = frozenset(names)
        hybrid.charge = Charge(self.maps)
        self._building.append(hybrid)
        try:
            async for chunk in scan(self.maps, map_name):
                for key, value in chunk:
                    shown = hybrid.shown(value)
                    hybrid.feed(key, shown)
                    hybrid.keep_row(key, shown)
        except BaseException:
            hybrid.charge.release()
            raise
        finally:
            self._building.remove(hybrid)
        window, cut = self._start(session, sub_id, hybrid, self._rows(hybrid))
        self._held[(session, sub_id)] = []
        hits = dict(window)  # a row gone meanwhile is left out: its LEAVE follows
        try:
            shown = await shown_rows(self.maps, map_name, fields, list(hits))
        except BaseException:
            self.unsubscribe(session, sub_id)  # nothing answered: nothing held
            raise
        return [(key, _Hit(value, *_rank(hits[key]))) for key, value in shown], cut

    def release(self, session: Recipient, sub_id: str) -> None:
        """Send the deltas held back for a subscription since it was answered."""
        self._send(self._held.pop((session, sub_id), ()))

    def _send(self, items: Iterable[tuple[Recipient, tuple[str, str, Build] | bytes]]) -> None:
        for session, item in items:
            if isinstance(item, bytes):
                self.outbox.put(session, item, "HYBRID_QUERY_DELTA")
            else:
                self.outbox.put_row(session, "HYBRID_QUERY_DELTA", *item)

    def unsubscribe(self, session: Recipient, sub_id: str) -> None:
        self._held.pop((session, sub_id), None)
        found = self._subs.pop((session, sub_id), None)
        if found is not None and found.charge is not None:
            found.charge.release()

    def drop(self, session: Recipient) -> None:
        for sub_id in [s for s in self._subs if s[0] is session]:
            self.unsubscribe(*sub_id)

    def _current(self, map_name: str, key: str, sent: Any) -> Any:
        try:
            return current_value(self.maps, map_name, key)
        except ColdValueError:  # evicted before its commit: what its change carried
            return sent

    def changed(self, events: Iterable[EventPayload]) -> Interest:
        """Recompute the windows of the hybrid queries on the changed maps and queue their
        deltas (`flush` sends them); returns the sessions whose hybrid filter matches each
        changed key (before or after the change)."""
        interest: Interest = {}
        if not self._subs and not self._building:
            return interest
        changed: dict[str, dict[str, Any]] = {}
        for event in events:
            record = event.record
            changed.setdefault(event.map_name, {})[event.key] = (
                ABSENT if record is None or record.value is None else record.value
            )
        for hybrid in self._building:
            for key, sent in changed.get(hybrid.map_name, {}).items():
                value = hybrid.shown(self._current(hybrid.map_name, key, sent))
                hybrid.feed(key, value)
                hybrid.keep_row(key, value)
        for (session, sub_id), hybrid in self._subs.items():
            keys = changed.get(hybrid.map_name)
            if not keys:
                continue
            budgeted = hybrid.keep is not None
            before_digests: dict[str, int | None] = {}
            new_values: dict[str, Any] = {}
            for key, sent in keys.items():
                before = hybrid.window.get(key)
                new_value = hybrid.shown(self._current(hybrid.map_name, key, sent))
                hybrid.feed(key, new_value)
                if budgeted:
                    before_digests[key] = hybrid.digests.get(key)
                    new_values[key] = new_value
                    hybrid.keep_row(key, new_value)
                matched = before is not None or (
                    new_value is not ABSENT and hybrid.query.predicate.matches(new_value)
                )
                if matched:
                    interest.setdefault((hybrid.map_name, key), set()).add(session)
            window, _ = hybrid.run(self._rows(hybrid))
            fresh = dict(window)
            deltas: list[tuple[ChangeType, str, _Hit | None]] = [
                ("LEAVE", key, None) for key in hybrid.window if key not in fresh
            ]
            for key, hit in window:
                old = hybrid.window.get(key)
                if old is None:
                    deltas.append(("ENTER", key, hit))
                elif abs(old.score - hit.score) > SCORE_EPSILON or (
                    key in before_digests and before_digests[key] != hybrid.digests.get(key)
                    if budgeted
                    else old.value != hit.value
                ):
                    deltas.append(("UPDATE", key, hit))
            hybrid.window = fresh
            staged = self._held.get((session, sub_id), self._staged)
            for kind, key, shown in deltas:
                item: tuple[str, str, Build] | bytes
                if shown is None or not budgeted:
                    item = self._frame(sub_id, kind, key, shown)
                elif key in new_values:
                    item = self._frame(sub_id, kind, key, _Hit(new_values[key], *_rank(shown)))
                else:  # a row moving in or re-ranked without changing: read when sent
                    item = (hybrid.map_name, key, self._later(hybrid, sub_id, kind, key, shown))
                staged.append((session, item))
        return interest

    def _frame(self, sub_id: str, kind: ChangeType, key: str, shown: _Hit | None) -> bytes:
        message = HybridQueryDelta(
            payload=HybridQueryDeltaPayload(
                subscription_id=sub_id,
                key=key,
                value=None if shown is None else shown.value,
                type=kind,
                change_type=kind,
                score=None if shown is None else shown.score,
                matched_terms=None if shown is None else shown.terms,
            )
        )
        return self.encode(message)

    def _later(self, hybrid: _Hybrid, sub_id: str, kind: ChangeType, key: str, hit: _Hit) -> Build:
        def build(current: Any) -> bytes | None:
            value = hybrid.shown(current)
            if value is ABSENT:
                return None  # gone meanwhile: its LEAVE follows
            return self._frame(sub_id, kind, key, _Hit(value, *_rank(hit)))

        return build

    def flush(self) -> None:
        """Send the deltas of the last `changed` (after the events they follow)."""
        staged, self._staged = self._staged, []
        self._send(staged)


def _rank(hit: _Hit) -> tuple[float, list[str]]:
    return hit.score, hit.terms


def _hybrid_key(sub_id: str) -> str:
    """The id a hybrid subscription holds in the session's subscriptions (event routing)."""
    return f"hybrid:{sub_id}"


async def hybrid_query_subscribe(session: Session, message: HybridQuerySubscribe) -> None:
    """`HYBRID_QUERY_SUBSCRIBE`: authorize READ, validate, answer `HYBRID_QUERY_RESP`."""
    server = session.server
    request = message.payload
    principal = session.principal
    assert principal is not None
    details = {"type": "HYBRID_QUERY_SUBSCRIBE", "subscriptionId": request.subscription_id}
    if not server.security.is_allowed(principal, request.map_name, "READ"):
        session.send_error(403, f"Access denied for {request.map_name}", details)
        return
    plain_sort = {
        k: v for k, v in (request.sort or {}).items() if k not in (SCORE_FIELD, KEY_FIELD)
    }
    try:
        query = parse_query(
            Query(
                predicate=request.predicate,
                where=request.where,
                sort=plain_sort or None,
                limit=request.limit,
            )
        )
    except QueryError as invalid:
        session.send_error(400, str(invalid), details)
        return
    fields = server.security.field_filter(principal, request.map_name)
    window, cut = await server.hybrid.subscribe(
        session, request.subscription_id, request.map_name, query, request.sort, fields
    )
    server.subscriptions.add(
        session,
        Subscription(_hybrid_key(request.subscription_id), request.map_name, query.wire),
    )
    session.send(
        HybridQueryResp(
            payload=HybridQueryRespPayload(
                subscription_id=request.subscription_id,
                results=[ScoredRow(k, h.value, h.score, h.terms) for k, h in window],
                has_more=cut,
                cursor_status="invalid" if request.cursor else "none",
            )
        )
    )
    server.hybrid.release(session, request.subscription_id)  # held under a budget only


async def hybrid_query_unsubscribe(session: Session, message: HybridQueryUnsubscribe) -> None:
    """`HYBRID_QUERY_UNSUBSCRIBE`: stop it (an unknown id is ignored)."""
    sub_id = message.payload.subscription_id
    session.server.hybrid.unsubscribe(session, sub_id)
    session.server.subscriptions.remove(session, _hybrid_key(sub_id))
