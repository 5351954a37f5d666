"""The server side of vector search: one `VectorIndex` per configured (map, field), kept in
step with the map, answering `VECTOR_SEARCH` and live `VECTOR_SEARCH_SUB`s.

Changes arrive as the event router's batches (`changed`, on the event loop): their keys are
queued per map and a background task (`run`) takes them in batches, reads each key's current
value, embeds the texts that changed on a worker thread (so the event loop never blocks on a
model), inserts the vectors on that thread too, then commits them, removes deleted rows and
re-evaluates the live vector searches of the map. Searches read the live map, so a deleted row
never shows even before its vector is removed. At start each index loads its snapshot and
catches up: rows whose source (text or vector bytes) no longer matches the snapshot's
fingerprint are re-embedded, rows gone from the map are removed.

A search ranks by cosine similarity (HNSW; exactly over the candidates when an exact
predicate filter keeps at most `exact_below` rows). On a map that also has full-text search,
a text query is **tri-hybrid**: the predicate filters, and BM25's ranked list (the map's
search index) and the vector list are fused by reciprocal rank fusion (k = 60) with the
configured or requested weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import numpy as np

from topgun.protocol import (
    EventPayload,
    Query,
    VectorHit,
    VectorQuery,
    VectorSearchUpdate,
    VectorSearchUpdatePayload,
)
from topgun.query import ABSENT, CompiledQuery, QueryError, parse_query
from topgun.search import RRF_K, SCORE_EPSILON, SearchError, reciprocal_rank_fusion
from topgun.server.live import current_value, live_items
from topgun.server.permissions import WITHHELD, FieldFilter
from topgun.server.views import scan
from topgun_vector.config import VectorConfig, VectorMapConfig
from topgun_vector.embedders import Embedder, Vectors
from topgun_vector.index import VectorIndex, fingerprint

if TYPE_CHECKING:
    from topgun.server import Server
    from topgun.server.events import Recipient

__all__ = ["FieldIndex", "Ranked", "VectorSearchError", "VectorService", "snapshot_path"]

logger = logging.getLogger(__name__)

_Candidates = tuple[list[tuple[str, float]], list[tuple[str, list[str]]]]
"""(nearest keys with their similarity, text-search keys with their matched terms)."""

HYBRID_LIST_MIN: Final = 100
"""Each list of a hybrid search holds at least this many hits (more when `k` is larger)."""

Source = Literal["text", "vector"]


class VectorSearchError(Exception):
    """A vector search that cannot run; the message is the response's `error`."""


def snapshot_path(data_dir: Path, map_name: str, field_name: str) -> Path:
    """Where the snapshot of (map, field) lives (names hex-encoded: any map name is safe)."""
    name = f"{map_name.encode().hex()}.{field_name.encode().hex()}.snapshot"
    return data_dir / "vector" / name


@dataclass(slots=True)
class FieldIndex:
    """The index of one field of one map."""

    map_name: str
    field: str
    source: Source
    index: VectorIndex
    path: Path

    def source_of(self, value: Any) -> str | bytes | None:
        """What the row `value` gives this index to embed (text) or to store (vector
        bytes); None when there is nothing (absent, wrong type, empty, bad length)."""
        if not isinstance(value, Mapping):
            return None
        found = value.get(self.field)
        if self.source == "text":
            return found if isinstance(found, str) and found.strip() else None
        if not isinstance(found, bytes | bytearray):
            return None
        return bytes(found) if vector_error(found, self.index.dimensions) is None else None


def vector_error(data: bytes | bytearray, dimensions: int) -> str | None:
    """Why `data` is not a usable vector of `dimensions` little-endian float32, or None."""
    if len(data) != 4 * dimensions:
        return (
            f"must be {dimensions} little-endian float32 ({4 * dimensions} bytes), "
            f"got {len(data)} bytes"
        )
    vector = np.frombuffer(data, dtype="<f4")
    if not bool(np.all(np.isfinite(vector))):
        return "must hold finite numbers"
    if not float(np.linalg.norm(vector)) > 0:
        return "must not be the zero vector"
    return None


def unit(data: bytes) -> Vectors:
    """Little-endian float32 bytes (checked by `vector_error`) as a unit vector."""
    vector = np.frombuffer(data, dtype="<f4").astype(np.float32)
    return vector / np.float32(np.linalg.norm(vector))


@dataclass(frozen=True, slots=True)
class Ranked:
    """One ranked row before values are attached."""

    key: str
    score: float
    similarity: float | None
    matched_terms: list[str]


@dataclass(slots=True)
class _Plan:
    """A vector search made ready to run (again, for a live one)."""

    map_name: str
    target: FieldIndex
    vector: Vectors | None
    text: str | None
    filter: CompiledQuery | None
    k: int
    weights: tuple[float, float]
    min_score: float | None


@dataclass(slots=True)
class _Live:
    plan: _Plan
    session: Recipient
    subscription_id: str
    fields: FieldFilter
    window: dict[str, Ranked] = field(default_factory=dict)


class VectorService:
    """Every vector index of one server, and its live vector searches."""

    def __init__(self, server: Server, config: VectorConfig, embedder: Embedder) -> None:
        self.server = server
        self.config = config
        self.embedder = embedder
        self.indexes: dict[str, dict[str, FieldIndex]] = {}
        for map_name, options in config.maps.items():
            self.indexes[map_name] = {
                name: FieldIndex(
                    map_name,
                    name,
                    "text" if name in options.text_fields else "vector",
                    VectorIndex(
                        embedder.dimensions,
                        embedder=embedder.name,
                        connectivity=config.connectivity,
                        expansion_add=config.expansion_add,
                        expansion_search=config.expansion_search,
                    ),
                    snapshot_path(server.config.data_dir, map_name, name),
                )
                for name in options.fields
            }
        self._pending: dict[str, dict[str, None]] = {}
        self._wake = anyio.Event()
        self._busy = False
        self._settled = anyio.Event()
        self._settled.set()
        self._live: dict[tuple[Recipient, str], _Live] = {}

    # -- keeping the indexes in step ------------------------------------------------------

    def map_config(self, map_name: str) -> VectorMapConfig | None:
        return self.config.maps.get(map_name)

    async def load(self, progress: Callable[[int], None] | None = None) -> None:
        """Load every snapshot, then catch up with the maps (see the module docstring)."""
        for map_name, fields in self.indexes.items():
            loaded = {name: target.index.load(target.path) for name, target in fields.items()}
            embedded = dict.fromkeys(fields, 0)
            present: set[str] = set()
            # A chunk of rows at a time: under a memory budget only a chunk's values are held.
            async for chunk in scan(self.server.maps, map_name):
                rows = dict(chunk)
                present.update(rows)
                for name, target in fields.items():
                    todo = [
                        key
                        for key, value in rows.items()
                        if (source := target.source_of(value)) is not None
                        and target.index.fingerprint(key) != fingerprint(source)
                    ]
                    await self._update(target, todo, rows, progress)
                    embedded[name] += len(todo)
            for name, target in fields.items():
                stale = [k for k in target.index.indexed_keys() if k not in present]
                for key in stale:
                    target.index.remove(key)
                logger.info(
                    "vector index %s.%s: %s, %d re-embedded, %d removed",
                    map_name,
                    target.field,
                    "snapshot loaded" if loaded[name] else "built",
                    embedded[name],
                    len(stale),
                )

    def changed(self, events: Iterable[EventPayload]) -> None:
        """Router watcher: queue the changed keys of vector-indexed maps."""
        for event in events:
            if event.map_name in self.indexes:
                self._pending.setdefault(event.map_name, {})[event.key] = None
                if self._settled.is_set():
                    self._settled = anyio.Event()
                self._wake.set()

    async def settled(self) -> None:
        """Return once every queued change is in the indexes (tests, shutdown)."""
        while self._pending or self._busy:
            await self._settled.wait()

    async def run(self) -> None:
        """The background task: apply queued changes; write snapshots of changed indexes
        every `snapshot_interval_s`."""
        last_snapshot = time.monotonic()
        interval = self.config.snapshot_interval_s
        while True:
            with anyio.move_on_after(max(0.0, last_snapshot + interval - time.monotonic())):
                await self._wake.wait()
            self._wake = anyio.Event()
            while self._pending:
                self._busy = True
                map_name = next(iter(self._pending))
                keys = list(self._pending.pop(map_name))
                try:
                    await self._apply(map_name, keys)
                except Exception:
                    logger.exception("vector index update of map %r failed", map_name)
                finally:
                    self._busy = False
            self._settled.set()
            if time.monotonic() - last_snapshot >= interval:
                await anyio.to_thread.run_sync(self.save)
                last_snapshot = time.monotonic()

    async def _apply(self, map_name: str, keys: list[str]) -> None:
        maps = self.server.maps
        async with maps.holding(map_name, keys):  # loads what a memory budget evicted
            rows = {key: current_value(maps, map_name, key) for key in keys}
            for target in self.indexes[map_name].values():
                todo: list[str] = []
                for key, value in rows.items():
                    source = target.source_of(value)
                    if source is None:
                        target.index.remove(key)
                    elif target.index.fingerprint(key) != fingerprint(source):
                        todo.append(key)
                await self._update(target, todo, rows, None)
        await self._refresh_live(map_name, set(keys))

    async def _update(
        self,
        target: FieldIndex,
        keys: Sequence[str],
        rows: Mapping[str, Any],
        progress: Callable[[int], None] | None,
    ) -> None:
        """Embed (or decode) and insert the vectors of `keys`, a batch per worker-thread call."""
        step = self.config.batch_size
        for start in range(0, len(keys), step):
            batch = list(keys[start : start + step])
            sources = [target.source_of(rows[key]) for key in batch]
            kept = [(k, s) for k, s in zip(batch, sources, strict=True) if s is not None]
            labels = target.index.reserve_labels(len(kept))

            def work(kept: list[tuple[str, str | bytes]] = kept, labels: Any = labels) -> Any:
                vectors = self._vectors(target, [s for _, s in kept])
                usable = np.linalg.norm(vectors, axis=1) > 0  # a text with nothing to embed
                target.index.add_vectors(labels[usable], vectors[usable])
                return usable

            usable = await anyio.to_thread.run_sync(work)
            for (key, _), ok in zip(kept, usable.tolist(), strict=True):
                if not ok:
                    target.index.remove(key)
            good = [pair for pair, ok in zip(kept, usable.tolist(), strict=True) if ok]
            target.index.commit(
                [k for k, _ in good], labels[usable], [fingerprint(s) for _, s in good]
            )
            if progress is not None:
                progress(len(batch))

    def _vectors(self, target: FieldIndex, sources: list[Any]) -> Vectors:
        if target.source == "text":
            return self.embedder.embed(sources)
        if not sources:
            return np.zeros((0, target.index.dimensions), dtype=np.float32)
        return np.stack([unit(s) for s in sources])

    def save(self) -> None:
        """Write the snapshot of every changed index (blocking)."""
        for fields in self.indexes.values():
            for target in fields.values():
                if target.index.dirty:
                    target.index.save(target.path)

    # -- searching --------------------------------------------------------------------------

    async def plan(self, request: VectorQuery) -> _Plan:
        """Check a request and embed its text query (on a worker thread)."""
        fields = self.indexes.get(request.map_name)
        if fields is None:
            raise VectorSearchError(f"Vector search not enabled for map: {request.map_name}")
        name = request.field if request.field is not None else next(iter(fields))
        target = fields.get(name)
        if target is None:
            raise VectorSearchError(
                f"Unknown vector field: {name!r} (indexed: {', '.join(fields)})"
            )
        if request.min_score is not None and not math.isfinite(request.min_score):
            raise VectorSearchError("minScore must be a finite number")
        compiled = None
        if request.predicate is not None or request.where is not None:
            try:
                compiled = parse_query(Query(where=request.where, predicate=request.predicate))
            except QueryError as bad:
                raise VectorSearchError(f"Invalid filter: {bad}") from None
        options = self.config.maps[request.map_name]
        weights = request.weights
        vector_weight = options.weights.get("vector", 1.0)
        text_weight = options.weights.get("text", 1.0)
        if weights is not None:
            vector_weight = vector_weight if weights.vector is None else weights.vector
            text_weight = text_weight if weights.text is None else weights.text
        for weight in (vector_weight, text_weight):
            if not (math.isfinite(weight) and weight >= 0):
                raise VectorSearchError("weights must be finite and >= 0")
        text: str | None = None
        vector: Vectors | None = None
        if (request.query is None) == (request.vector is None):
            raise VectorSearchError("give exactly one of query (text) and vector")
        if request.vector is not None:
            problem = vector_error(request.vector, target.index.dimensions)
            if problem is not None:
                raise VectorSearchError(f"vector {problem}")
            vector = unit(request.vector)
        elif request.query is not None and request.query.strip():
            text = request.query
            (embedded,) = await anyio.to_thread.run_sync(self.embedder.embed, [text])
            vector = embedded if float(np.linalg.norm(embedded)) > 0 else None
        return _Plan(
            request.map_name,
            target,
            vector,
            text,
            compiled,
            request.k,
            (vector_weight, text_weight),
            request.min_score,
        )

    async def results(
        self, plan: _Plan, fields: FieldFilter
    ) -> tuple[list[Ranked], int, list[VectorHit]]:
        """The results of `plan` for a reader seeing `fields`, the candidate count, and
        their wire rows. Under a memory budget the rows it reads are loaded first: the
        filter's a chunk at a time, the candidates' together."""
        maps = self.server.maps
        if not maps.tiered:
            ranked, total = self._rank(plan, fields, self._allowed(plan, fields))
            return ranked, total, self.hits(ranked, plan.map_name, fields)
        allowed: set[str] | None = None
        if plan.filter is not None:
            allowed = set()
            async for chunk in scan(maps, plan.map_name):
                allowed.update(self._passing(plan, fields, chunk))
        nearest, text_hits = self._candidates(plan, allowed)
        keys = [k for k, _ in nearest] + [k for k, _ in text_hits]
        async with maps.holding(plan.map_name, keys):
            ranked, total = self._rank(plan, fields, allowed, (nearest, text_hits))
            return ranked, total, self.hits(ranked, plan.map_name, fields)

    def _allowed(self, plan: _Plan, fields: FieldFilter) -> set[str] | None:
        """The keys `plan`'s filter lets through as `fields` shows them (None: no filter)."""
        if plan.filter is None:
            return None
        return set(self._passing(plan, fields, live_items(self.server.maps, plan.map_name)))

    @staticmethod
    def _passing(
        plan: _Plan, fields: FieldFilter, rows: Iterable[tuple[str, Any]]
    ) -> Iterator[str]:
        assert plan.filter is not None
        for key, value in rows:
            shown = fields.apply(value)
            if shown is not WITHHELD and plan.filter.matches(shown):
                yield key

    def _depth(self, plan: _Plan) -> tuple[int, bool]:
        text_index = self.server.search.index(plan.map_name) if plan.text is not None else None
        hybrid = text_index is not None and plan.weights[1] > 0
        return (max(plan.k, HYBRID_LIST_MIN) if hybrid else plan.k), hybrid

    def _candidates(self, plan: _Plan, allowed: set[str] | None) -> _Candidates:
        """The nearest keys by vector (with similarity) and the keys the text search found
        (with their matched terms), in rank order, before the reader's field filter."""
        depth, hybrid = self._depth(plan)
        index = plan.target.index
        if plan.vector is None:
            nearest: list[tuple[str, float]] = []
        elif allowed is not None and len(allowed) <= self.config.exact_below:
            nearest = index.exact(plan.vector, allowed)
        else:
            nearest = self._filtered(index, plan.vector, depth, allowed)
        text_hits: list[tuple[str, list[str]]] = []
        if hybrid:
            text_index = self.server.search.index(plan.map_name)
            assert text_index is not None
            assert plan.text is not None
            try:
                found = text_index.search(plan.text, max_results=max(depth, 1000))
            except SearchError:
                found = None
            if found is not None:
                text_hits = [
                    (hit.key, hit.matched_terms)
                    for hit in found.hits
                    if allowed is None or hit.key in allowed
                ]
        return nearest, text_hits

    def _rank(
        self,
        plan: _Plan,
        fields: FieldFilter,
        allowed: set[str] | None,
        candidates: _Candidates | None = None,
    ) -> tuple[list[Ranked], int]:
        """Rank the candidates (found now unless given) as `fields` shows their rows."""
        maps = self.server.maps

        def visible(key: str) -> Any:
            value = current_value(maps, plan.map_name, key)
            return WITHHELD if value is ABSENT else fields.apply(value)

        depth, hybrid = self._depth(plan)
        if plan.vector is None and not hybrid:
            return [], 0
        nearest, text_hits = candidates or self._candidates(plan, allowed)
        nearest = [(k, s) for k, s in nearest if visible(k) is not WITHHELD][:depth]
        similarity = dict(nearest)
        if not hybrid:
            ranked = [Ranked(k, s, s, []) for k, s in nearest]
        else:
            shown = [(k, t) for k, t in text_hits if visible(k) is not WITHHELD][:depth]
            terms = dict(shown)
            fused = reciprocal_rank_fusion(
                [[k for k, _ in nearest], [k for k, _ in shown]], weights=plan.weights, k=RRF_K
            )
            ranked = [Ranked(k, s, similarity.get(k), terms.get(k, [])) for k, s in fused if s > 0]
        if plan.min_score is not None:
            ranked = [r for r in ranked if r.score >= plan.min_score]
        return ranked[: plan.k], len(ranked)

    @staticmethod
    def _filtered(
        index: VectorIndex, vector: Vectors, count: int, allowed: set[str] | None
    ) -> list[tuple[str, float]]:
        """The `count` nearest keys among `allowed` (all if None), widening the graph search
        until enough pass the filter or the whole index was searched."""
        wanted = count
        while True:
            found = index.search(vector, wanted)
            kept = found if allowed is None else [(k, s) for k, s in found if k in allowed]
            if len(kept) >= count or wanted >= len(index):
                return kept
            wanted = min(len(index), wanted * 4)

    def hits(self, ranked: list[Ranked], map_name: str, fields: FieldFilter) -> list[VectorHit]:
        """Wire rows for `ranked`, with the values the reader may see."""
        rows = []
        for r in ranked:
            value = current_value(self.server.maps, map_name, r.key)
            shown = WITHHELD if value is ABSENT else fields.apply(value)
            if shown is not WITHHELD:
                rows.append(VectorHit(r.key, shown, r.score, r.matched_terms, r.similarity))
        return rows

    # -- live vector searches ----------------------------------------------------------------

    async def subscribe(
        self, session: Recipient, subscription_id: str, plan: _Plan, fields: FieldFilter
    ) -> tuple[list[VectorHit], int]:
        """Start (or replace) a live vector search; returns its first rows and count."""
        ranked, total, rows = await self.results(plan, fields)
        live = _Live(plan, session, subscription_id, fields)
        live.window = {r.key: r for r in ranked}
        self._live[(session, subscription_id)] = live
        return rows, total

    def unsubscribe(self, session: Recipient, subscription_id: str) -> None:
        self._live.pop((session, subscription_id), None)

    def drop(self, session: Recipient) -> None:
        """Forget every live vector search of a closed session."""
        for sub in [s for s in self._live if s[0] is session]:
            del self._live[sub]

    async def _refresh_live(self, map_name: str, changed: set[str]) -> None:
        encode = self.server.codec.encode
        for live in list(self._live.values()):
            if live.plan.map_name != map_name:
                continue
            if not live.session.is_open:
                self.drop(live.session)
                continue
            ranked, _, rows = await self.results(live.plan, live.fields)
            if self._live.get((live.session, live.subscription_id)) is not live:
                continue  # replaced or stopped meanwhile
            shown = {hit.key: hit.value for hit in rows}
            now = {r.key: r for r in ranked}
            updates: list[tuple[Literal["ENTER", "UPDATE", "LEAVE"], Ranked]] = [
                ("LEAVE", old) for key, old in live.window.items() if key not in now
            ]
            for key, r in now.items():
                old = live.window.get(key)
                if old is None:
                    updates.append(("ENTER", r))
                elif key in changed or abs(r.score - old.score) > SCORE_EPSILON:
                    updates.append(("UPDATE", r))
            live.window = now
            for kind, r in updates:
                value = None
                if kind != "LEAVE":
                    if r.key not in shown:
                        continue  # withheld from this reader
                    value = shown[r.key]
                message = VectorSearchUpdate(
                    payload=VectorSearchUpdatePayload(
                        subscription_id=live.subscription_id,
                        key=r.key,
                        value=value,
                        score=r.score,
                        type=kind,
                        change_type=kind,
                        similarity=r.similarity,
                    )
                )
                live.session.send_frame(encode(message), "VECTOR_SEARCH_UPDATE")
