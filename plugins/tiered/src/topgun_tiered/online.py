"""Archiving inside a running server: the keys of LWW maps untouched for an age move into
key segments beside the server's writes, every `archive_interval` or on request
(`POST /admin/tier/archive`), and their values leave memory.

A pass walks the server's LWW maps, picks the keys whose live value was written before
the horizon, and has the wrapper archive them (`TieredBackend.archive_keys`, at most
`segment_keys` a segment). Their records stay in memory cold (key, timestamp, TTL,
Merkle hash), so merges, sync and expiry go on as before; the next request that needs a
value loads it, which restores its segment. OR-Maps are archived whole only, with the
server stopped (`topgun tier archive`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.lowlevel

from topgun.storage import StorageError
from topgun_tiered.wrapper import TieredBackend

logger = logging.getLogger(__name__)

_YIELD_EVERY: Final = 10_000
"""Records looked at between checkpoints while a pass picks keys (the loop stays live)."""


@dataclass
class ArchivePass:
    """Where a pass of a running server's archiver is (`GET /admin/tier/archive`)."""

    older_than_ms: int
    running: bool = True
    maps_total: int = 0
    maps_done: int = 0
    keys: int = 0
    """Keys archived so far."""
    segments: int = 0
    bytes: int = 0
    """Compressed bytes of the segments written."""
    evicted: int = 0
    """Values that left memory."""
    error: str | None = None


class ServerArchiver:
    """The archiver of one running server whose storage is `TieredBackend`."""

    def __init__(self, server: Any, backend: TieredBackend) -> None:
        self._server = weakref.ref(server)  # `_archivers` is keyed weakly by the server
        self.backend = backend
        self.current: ArchivePass | None = None
        """The latest pass (running or finished)."""
        self.passes = 0
        """Passes finished since the server started."""

    @property
    def server(self) -> Any:
        server = self._server()
        if server is None:
            raise RuntimeError("the server of this archiver is gone")
        return server

    @property
    def running(self) -> bool:
        return self.current is not None and self.current.running

    def begin(self, older_than_ms: int | None = None) -> ArchivePass:
        """A new pass's progress, made current (see `finish`)."""
        age = self.backend.options.archive_after_ms() if older_than_ms is None else older_than_ms
        progress = self.current = ArchivePass(age)
        return progress

    def start(self, older_than_ms: int | None = None, names: Sequence[str] = ()) -> ArchivePass:
        """Start a pass in the background (a pass already running is returned as it is):
        keys untouched for `older_than_ms` (default `archive_after`), of `names` or of
        every LWW map."""
        if self.current is not None and self.current.running:
            return self.current
        progress = self.begin(older_than_ms)
        self.server.start_background(lambda: self.finish(progress, list(names)))
        return progress

    async def finish(self, progress: ArchivePass, names: Sequence[str] = ()) -> None:
        """Run the pass `begin` made, logging its outcome (a failure is logged as an error
        and kept in `progress.error`; the server goes on)."""
        try:
            await self.run(progress, names)
        except Exception as exc:
            progress.error = str(exc)
            logger.error("archiving stopped: %s", exc)
        finally:
            progress.running = False
        if progress.error is None:
            logger.info(
                "archived %d key(s) in %d segment(s), %d byte(s); %d value(s) left memory",
                progress.keys,
                progress.segments,
                progress.bytes,
                progress.evicted,
            )

    async def run(self, progress: ArchivePass, names: Sequence[str] = ()) -> None:
        """One pass, in the caller's task (`start` runs it in the background)."""
        maps = self.server.maps
        unknown = [name for name in names if maps.kind(name) is None]
        if unknown:
            raise StorageError(f"no such map: {', '.join(map(repr, unknown))}")
        chosen = list(names) or maps.names()
        progress.maps_total = len(chosen)
        horizon = self.backend.now_ms() - progress.older_than_ms
        for name in chosen:
            await self._archive_keys_of(name, horizon, progress)
            progress.maps_done += 1
        self.passes += 1

    async def _archive_keys_of(self, name: str, horizon: int, progress: ArchivePass) -> None:
        maps = self.server.maps
        lww = maps.lww(name)
        if lww is None:
            return  # an OR-Map, or archived whole
        held = self.backend.archive.keys.get(name, {})
        picked: list[str] = []
        for seen, (key, record) in enumerate(lww.records(), 1):
            if record.value is not None and record.timestamp.millis < horizon and key not in held:
                picked.append(key)
            if seen % _YIELD_EVERY == 0:
                await anyio.lowlevel.checkpoint()
        size = self.backend.options.segment_keys
        for start in range(0, len(picked), size):
            moved = await self.backend.archive_keys(
                name, picked[start : start + size], before_ms=horizon
            )
            if moved is None:
                continue
            progress.keys += len(moved.keys)
            progress.segments += 1
            progress.bytes += moved.info.stored_bytes
            progress.evicted += maps.evict_stored(name, moved.stamps)


_archivers: weakref.WeakKeyDictionary[Any, ServerArchiver] = weakref.WeakKeyDictionary()


def archiver_of(server: Any) -> ServerArchiver | None:
    """The archiver of `server` (`None` unless its storage is tiered)."""
    found = _archivers.get(server)
    if found is None and isinstance(server.backend, TieredBackend):
        found = _archivers[server] = ServerArchiver(server, server.backend)
    return found


async def archive_every(archiver: ServerArchiver, interval_ms: int) -> None:
    """Run a pass every `interval_ms`, unless one started on request is still running
    (a failed pass is logged; the next one runs)."""
    while True:
        await anyio.sleep(interval_ms / 1000)
        if not archiver.running:
            await archiver.finish(archiver.begin())
