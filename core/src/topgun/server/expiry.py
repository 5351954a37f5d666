"""TTL expiry (PROTOCOL.md §6.11): records with a `ttlMs` become tombstones when they expire.

A timer heap holds one entry per record written with a TTL, ordered by expiry time
(`timestamp.millis + ttlMs`); a write adds its entry (the schedule is a change observer of
the write pipeline) and loading the maps adds the stored ones. The expiry task sleeps until
the earliest entry is due (at most `MAX_SLEEP_S`, so a wall clock that jumps is noticed
within a second), pops every due entry whose record is still the key's current one, and
writes the tombstones through the write pipeline as the server's own (trusted) write: they
are intercepted by `before_op` plugins, persisted, journaled as `DELETE` and announced as
`SERVER_EVENT REMOVE` to every subscriber like any remove. An LWW tombstone gets the
timestamp `{ceil(millis + ttlMs), 0, serverNodeId}`; an expired OR-Map record's tag is
tombstoned (`OR_REMOVE`). A record replaced before it expired is skipped when its entry
comes up: only heap tops are looked at, never the whole map.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import anyio

from topgun.crdt import LWWRecord, Timestamp
from topgun.protocol import ClientOp
from topgun.server.maps import MapRegistry, Recording
from topgun.server.writes import Applied, WriteContext, WritePipeline

logger = logging.getLogger(__name__)

MAX_SLEEP_S: Final = 0.5
"""The expiry task looks at the heap top at least this often (seconds)."""


@dataclass(frozen=True)
class ServerPrincipal:
    """The principal of the server's own writes (TTL expiry): satisfies `Principal`."""

    user_id: str | None
    roles: tuple[str, ...] = ("server",)
    claims: dict[str, object] = field(default_factory=dict)


@dataclass(order=True, frozen=True, slots=True)
class _Due:
    at_ms: float
    map_name: str
    key: str
    tag: str
    """The OR tag of the record, or (LWW) the string form of its timestamp."""
    lww: bool


class ExpirySchedule:
    """The timer heap of records with a TTL, and the task that expires them."""

    def __init__(
        self,
        *,
        maps: MapRegistry,
        writes: WritePipeline,
        node_id: str,
        clock: Callable[[], int],
    ) -> None:
        self.maps = maps
        self.writes = writes
        self.node_id = node_id
        self.clock = clock
        self.context = WriteContext(ServerPrincipal(node_id), None)
        self._heap: list[_Due] = []
        self._wakeup = anyio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def _push(self, due: _Due) -> None:
        earliest = self._heap[0].at_ms if self._heap else math.inf
        heapq.heappush(self._heap, due)
        if due.at_ms < earliest:
            self._wakeup.set()

    def observe(self, applied: Sequence[Applied], recording: Recording) -> None:
        """The change observer: schedule every record written with a TTL."""
        for one in applied:
            for event in one.events:
                record = event.record or event.or_record
                if record is None or record.ttl_ms is None:
                    continue
                tag = event.or_record.tag if event.or_record is not None else str(record.timestamp)
                at = record.timestamp.millis + record.ttl_ms
                self._push(_Due(at, one.map_name, one.key, tag, event.record is not None))

    def load(self) -> int:
        """Schedule every stored record with a TTL (once, after the maps loaded)."""
        before = len(self._heap)
        for name in self.maps.names():
            self._add_map(name)
        heapq.heapify(self._heap)
        return len(self._heap) - before

    def load_map(self, name: str) -> None:
        """Schedule the records with a TTL of map `name` (restored from the archive)."""
        self._add_map(name)
        heapq.heapify(self._heap)

    def _add_map(self, name: str) -> None:
        lww = self.maps.lww(name)
        if lww is not None:
            for key, record in lww.records():
                if record.ttl_ms is not None and record.value is not None:
                    at = record.timestamp.millis + record.ttl_ms
                    self._heap.append(_Due(at, name, key, str(record.timestamp), True))
            return
        ormap = self.maps.ormap(name)
        if ormap is None:
            return
        for key in ormap.all_keys():
            for added in ormap.records(key):
                if added.ttl_ms is not None:
                    at = added.timestamp.millis + added.ttl_ms
                    self._heap.append(_Due(at, name, key, added.tag, False))

    def due_ops(self, now_ms: int) -> list[ClientOp]:
        """Pop the entries due at `now_ms`; the ops that expire those still current."""
        ops: list[ClientOp] = []
        heap = self._heap
        while heap and heap[0].at_ms < now_ms:
            due = heapq.heappop(heap)
            if due.lww:
                lww = self.maps.lww(due.map_name)
                current = lww.get_record(due.key) if lww is not None else None
                if current is None or current.value is None or str(current.timestamp) != due.tag:
                    continue  # replaced or removed since
                stamp = Timestamp(math.ceil(due.at_ms), 0, self.node_id)
                ops.append(
                    ClientOp(map_name=due.map_name, key=due.key, record=LWWRecord(None, stamp))
                )
            elif self.maps.holds_live_tag(due.map_name, due.tag):
                ops.append(
                    ClientOp(
                        map_name=due.map_name, key=due.key, op_type="OR_REMOVE", or_tag=due.tag
                    )
                )
        return ops

    async def expire_due(self) -> int:
        """Tombstone every record expired by now; returns how many ops were written."""
        ops = self.due_ops(self.clock())
        if ops:
            request = await self.writes.apply(ops, self.context, origin=None, trusted=True)
            for state in request.ops:
                if state.error is not None:
                    logger.warning("TTL expiry of a key was not applied: %s", state.error)
        return len(ops)

    async def run(self) -> None:
        """Expire records as they come due, forever (a server background task)."""
        while True:
            await self.expire_due()
            delay = MAX_SLEEP_S
            if self._heap:
                delay = min(delay, max(self._heap[0].at_ms - self.clock() + 1, 1) / 1000)
            self._wakeup = anyio.Event()
            with anyio.move_on_after(delay):
                await self._wakeup.wait()
