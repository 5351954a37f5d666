"""Tombstone GC (PROTOCOL.md §6.11, §5.16): forget tombstones nobody can still need.

Every `expiry.gc_interval_ms` (default an hour) the server computes
`minHlc = min(server now, last activity of every authenticated connection)` and
`safe = {minHlc.millis - gc_age_ms, 0, ""}`, prunes every LWW tombstone and OR tombstone tag
older than `safe` from memory (maps and Merkle tries) and from storage, records `safe` as the
prune horizon of each map that lost one (a client last synced before it must reset), and
sends `GC_PRUNE{olderThan: safe}` to every authenticated connection.

A connection's last activity is the newest record timestamp it sent (the write pipeline
reports them, `record_sent`), else the server clock at its last frame
(`Session.last_frame_ms`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import msgspec

from topgun.crdt import Timestamp
from topgun.hooks import Principal
from topgun.protocol import GcPrune, GcPrunePayload
from topgun.server.maps import MapRegistry
from topgun.server.periodic import every
from topgun.storage import Change, PutMeta

logger = logging.getLogger(__name__)


class GcClient(Protocol):
    """What GC needs of a session."""

    @property
    def principal(self) -> Principal | None:
        """`None` until the session authenticated."""

    @property
    def last_frame_ms(self) -> int:
        """Server clock at the session's last inbound frame."""

    def send(self, message: msgspec.Struct, *, urgent: bool | None = None) -> None:
        """Queue a message for the client."""


@dataclass(frozen=True, slots=True)
class GcRun:
    """What one GC run did."""

    older_than: Timestamp
    pruned: int
    """How many tombstones (LWW records and OR tags) were dropped."""
    notified: int
    """How many connections got `GC_PRUNE`."""


class TombstoneGC:
    """Runs tombstone GC over `maps` for the sessions `clients()` returns."""

    def __init__(
        self,
        *,
        maps: MapRegistry,
        clock: Callable[[], int],
        gc_age_ms: int,
        interval_ms: int,
        clients: Callable[[], Iterable[GcClient]],
    ) -> None:
        self.maps = maps
        self.clock = clock
        self.gc_age_ms = gc_age_ms
        self.interval_ms = interval_ms
        self.clients = clients
        self.prune_observers: list[Callable[[list[Change]], list[Change]]] = []
        """Told what each run prunes; each returns more storage changes for the same batch."""
        self._newest: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()

    def record_sent(self, client: object, millis: int) -> None:
        """Remember that `client` sent a record stamped `millis` (its last activity)."""
        if millis > self._newest.get(client, -1):
            self._newest[client] = millis

    def safe_horizon(self, clients: Iterable[GcClient]) -> Timestamp:
        """`{min(now, every client's last activity) - gc_age_ms, 0, ""}`."""
        min_ms = self.clock()
        for client in clients:
            if client.principal is not None:
                min_ms = min(min_ms, self._newest.get(client, client.last_frame_ms))
        return Timestamp(max(min_ms - self.gc_age_ms, 0), 0, "")

    async def collect(self) -> GcRun:
        """One GC run: prune, persist, announce."""
        clients = [client for client in self.clients() if client.principal is not None]
        safe = self.safe_horizon(clients)
        changes = self.maps.prune_tombstones(safe)
        for observer in self.prune_observers:
            changes += observer(changes)
        if changes:
            if self.maps.writer is None:
                raise RuntimeError("storage is not open")
            await self.maps.writer.submit(changes)
        pruned = sum(1 for change in changes if not isinstance(change, PutMeta))
        message = GcPrune(payload=GcPrunePayload(older_than=safe))
        for client in clients:
            client.send(message)
        logger.info("GC pruned %d tombstone(s) older than %s", pruned, safe)
        return GcRun(safe, pruned, len(clients))

    async def run(self) -> None:
        """Collect every `interval_ms`, forever (a server background task)."""
        await every(
            self.interval_ms / 1000,
            self.collect,
            logger,
            "tombstone GC failed; it runs again next interval",
        )
