"""Write-behind: a storage wrapper (built-in `write-behind`) that stages changes in memory
and flushes them to the backend it wraps in the background.

`store_batch` checks a batch as the backend would (malformed changes, map kinds, values
msgpack cannot hold) and stages it: it returns without waiting for the backend. Staged
changes are flushed oldest first, in transactions of up to `flush_batch` changes, every
`flush_interval_ms` or as soon as `flush_batch` changes are staged. While they wait:

- **Read-your-writes.** Loads return the backend's state with the staged changes applied
  on top, by the contract's own rules.
- **Coalescing.** A newer put of a staged LWW key replaces the staged one in place (an
  older one is dropped: the backend would ignore it); a staged meta value is replaced.
  Deletes and prunes of a key end coalescing for it, so the order of effects is kept.
- **Retry.** A failed flush is retried with exponential backoff (`retry_min_ms` up to
  `retry_max_ms`) until it commits; nothing staged is ever dropped. `status()` reports
  the backend unavailable meanwhile.
- **Backpressure.** At most `max_staged` changes wait: `store_batch` then waits for room
  (`when_full="wait"`, what the server uses: its writes wait in turn), or raises
  `StorageFullError` (`"refuse"`, for programs that call the wrapper directly and would
  rather fail a batch than wait; under the server's `StorageWriter` a refused batch would
  fail writes already applied in memory, so the configured wrapper always waits).
- **Durability.** The wrapper has `DeferredDurability`: `StorageWriter` finishes a
  `Commit`, and so the server acknowledges PERSISTED, only after the flush holding those
  changes committed in the backend.
- **Drain.** `close()` flushes everything staged (retrying) before closing the backend.
- **Re-encoding** (`RecodableBackend`, for key rotation) is forwarded to the wrapped
  backend once everything staged is flushed.
- **Pages** (`PagedBackend`) are forwarded to the wrapped backend once the changes staged
  for that map are flushed (a backend that cannot page answers the whole map as one page).

`initialize()` starts the flushing task in a task group that `close()` ends: call both
from the same task (as the server does), like entering and leaving a context manager.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Annotated, Literal

import anyio
import anyio.lowlevel
import msgspec
from anyio.abc import TaskGroup

from topgun.hooks import Register, hookimpl
from topgun.storage.codecs import CodecContext, CodecPipeline
from topgun.storage.contract import (
    CREATING_CHANGES,
    AddORRecord,
    BackendConfig,
    BackendWrapper,
    Change,
    DeleteKey,
    LWWSnapshot,
    MapInfo,
    MapKind,
    MapPage,
    MapSnapshot,
    ORSnapshot,
    PagedBackend,
    PruneRecord,
    PutMeta,
    PutRecord,
    RecodableBackend,
    RemoveORTag,
    ReportsStatus,
    StorageBackend,
    StorageStatus,
    StoredValue,
    check_batch,
    check_page_request,
    kind_mismatch,
    kind_of,
    recodable_under,
)
from topgun.storage.errors import StorageClosedError, StorageFullError
from topgun.storage.memory import MemoryBackend

logger = logging.getLogger(__name__)

Positive = Annotated[int, msgspec.Meta(ge=1)]

_PLAIN = CodecPipeline()
"""msgpack only: checks at staging time that a value can be stored at all."""


class WriteBehindConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The `[write_behind]` section of the server configuration."""

    flush_interval_ms: Positive = 50
    """Staged changes are flushed at most this long after the first of them was staged."""
    flush_batch: Positive = 2000
    """A flush starts as soon as this many changes are staged; one transaction holds at
    most this many."""
    max_staged: Positive = 100_000
    """At most this many changes wait (staged or being flushed)."""
    retry_min_ms: Positive = 50
    """The first delay before a failed flush is retried; it doubles on each failure..."""
    retry_max_ms: Positive = 5000
    """...up to this."""

    def __post_init__(self) -> None:
        if self.retry_min_ms > self.retry_max_ms:
            raise ValueError(
                f"retry_min_ms ({self.retry_min_ms}) is more than retry_max_ms "
                f"({self.retry_max_ms})"
            )


_Slot = tuple[str, str, str]
"""What a coalescible change writes: ("lww", map, key) or ("meta", namespace, key)."""


class WriteBehind:
    """The write-behind wrapper around `backend` (see the module docstring)."""

    def __init__(
        self,
        backend: StorageBackend,
        config: WriteBehindConfig | None = None,
        *,
        when_full: Literal["wait", "refuse"] = "wait",
    ) -> None:
        if when_full not in ("wait", "refuse"):
            raise ValueError(f"when_full must be 'wait' or 'refuse', not {when_full!r}")
        self.backend = backend
        self.config = config if config is not None else WriteBehindConfig()
        self.when_full = when_full
        """At `max_staged`: wait for room, or raise `StorageFullError`."""
        self.flushes = 0
        """Transactions committed in the backend."""
        self.retries = 0
        """Failed flushes retried."""
        self._problem: str | None = None
        self._staged: dict[int, Change] = {}  # sequence -> change, oldest first
        self._slots: dict[_Slot, int] = {}  # coalescible write -> its staged sequence
        self._in_flight: list[Change] = []
        self._next = 1
        self._durable = 0  # every sequence up to this one is committed in the backend
        self._kinds: dict[str, MapKind] = {}
        self._task_group: TaskGroup | None = None
        self._opened = False
        self._closing = False
        self._closed = False
        self._staged_event = anyio.Event()  # a first change was staged
        self._full_event = anyio.Event()  # flush_batch changes staged, or closing
        self._room = anyio.Event()
        self._durable_event = anyio.Event()
        self._stopped = anyio.Event()

    def __repr__(self) -> str:
        return f"WriteBehind({self.backend!r})"

    # --- lifecycle ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if not self._opened or self._closing:
            state = "closed" if self._closing or self._closed else "not initialized"
            raise StorageClosedError(f"the write-behind storage wrapper is {state}")

    async def initialize(self) -> None:
        if self._closed or self._closing:
            raise StorageClosedError("the write-behind storage wrapper is closed; make a new one")
        if self._opened:
            return
        await self.backend.initialize()
        self._kinds = {info.name: info.kind for info in await self.backend.list_maps()}
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        task_group.start_soon(self._run)
        self._opened = True

    async def close(self) -> None:
        """Flush everything staged (retrying until it commits), then close the backend."""
        if self._closed:
            return
        self._closing = True
        try:
            if self._task_group is not None:
                self._full_event.set()
                self._staged_event.set()
                self._room.set()
                try:
                    await self._stopped.wait()
                finally:
                    task_group, self._task_group = self._task_group, None
                    await task_group.__aexit__(None, None, None)
        finally:
            self._closed = True
            self._durable_event.set()
            await self.backend.close()

    # --- DeferredDurability ------------------------------------------------------------

    def durability_mark(self) -> int:
        return self._next - 1

    async def wait_durable(self, mark: int) -> None:
        while self._durable < mark:
            if self._closed:
                raise StorageClosedError(
                    "the write-behind storage wrapper closed before the changes were flushed"
                )
            event = self._durable_event
            await event.wait()

    # --- status ------------------------------------------------------------------------

    @property
    def staged(self) -> int:
        """Changes staged or being flushed."""
        return len(self._staged) + len(self._in_flight)

    def status(self) -> StorageStatus:
        inner = self.backend.status() if isinstance(self.backend, ReportsStatus) else None
        problem = self._problem or (inner.problem if inner is not None else None)
        return StorageStatus(
            available=self._problem is None and (inner is None or inner.available),
            problem=problem,
            retries=self.retries + (inner.retries if inner is not None else 0),
            staged=self.staged + (inner.staged if inner is not None else 0),
        )

    # --- writes ------------------------------------------------------------------------

    async def store_batch(self, changes: Sequence[Change]) -> None:
        """Stage `changes` (all or nothing); see the module docstring."""
        self._check_open()
        check_batch(changes)
        await anyio.lowlevel.checkpoint()
        config = self.config
        while self._staged and self.staged + len(changes) > config.max_staged:
            if self.when_full == "refuse":
                raise StorageFullError(
                    f"the write-behind staging area holds {self.staged} change(s) and takes at "
                    f"most {config.max_staged}: {len(changes)} more refused (the backend is "
                    "slow or unavailable; retry later)"
                )
            room = self._room
            await room.wait()
            self._check_open()
        self._check_open()
        created = self._check_kinds(changes)
        for change in changes:  # values msgpack cannot hold fail here, not at flush time
            if isinstance(change, PutRecord) and change.record.value is not None:
                _PLAIN.pack(change.record.value, CodecContext("lww", change.map_name, change.key))
            elif isinstance(change, AddORRecord):
                _PLAIN.pack(change.record.value, CodecContext("ormap", change.map_name, change.key))
        self._kinds.update(created)
        for change in changes:
            self._stage(change)
        self._staged_event.set()
        if len(self._staged) >= config.flush_batch:
            self._full_event.set()

    async def delete(self, name: str, keys: Iterable[str]) -> None:
        await self.store_batch([DeleteKey(name, key) for key in keys])

    def _check_kinds(self, changes: Sequence[Change]) -> dict[str, MapKind]:
        created: dict[str, MapKind] = {}
        for change in changes:
            if isinstance(change, PutMeta):
                continue
            kind = kind_of(change)
            known = self._kinds.get(change.map_name) or created.get(change.map_name)
            if known is None and kind is not None and isinstance(change, CREATING_CHANGES):
                created[change.map_name] = kind
            elif known is not None and kind is not None and known != kind:
                raise kind_mismatch(change.map_name, known, change)
        return created

    def _stage(self, change: Change) -> None:
        slot: _Slot | None = None
        if isinstance(change, PutRecord):
            slot = ("lww", change.map_name, change.key)
        elif isinstance(change, PutMeta):
            slot = ("meta", change.namespace, change.key)
        elif isinstance(change, PruneRecord | DeleteKey):
            self._slots.pop(("lww", change.map_name, change.key), None)
        if slot is not None:
            sequence = self._slots.get(slot)
            if sequence is not None:
                staged = self._staged[sequence]
                if not (
                    isinstance(staged, PutRecord)
                    and isinstance(change, PutRecord)
                    and change.record.timestamp <= staged.record.timestamp
                ):
                    self._staged[sequence] = change
                return
        sequence = self._next
        self._next += 1
        self._staged[sequence] = change
        if slot is not None:
            self._slots[slot] = sequence

    async def _run(self) -> None:
        """The flushing task: flush oldest first until closed and drained."""
        config = self.config
        try:
            while True:
                if not self._staged:
                    if self._closing:
                        return
                    await self._staged_event.wait()
                    self._staged_event = anyio.Event()
                    continue
                if len(self._staged) < config.flush_batch and not self._closing:
                    with anyio.move_on_after(config.flush_interval_ms / 1000):
                        await self._full_event.wait()
                self._full_event = anyio.Event()
                if self._closing:
                    self._full_event.set()
                await self._flush()
        finally:
            self._stopped.set()

    async def _flush(self) -> None:
        taken = list(self._staged)[: self.config.flush_batch]
        last = taken[-1]
        self._in_flight = [self._staged.pop(sequence) for sequence in taken]
        self._slots = {slot: seq for slot, seq in self._slots.items() if seq > last}
        delay = self.config.retry_min_ms / 1000
        while True:
            try:
                await self.backend.store_batch(self._in_flight)
            except Exception as exc:
                self.retries += 1
                first = self._problem is None
                self._problem = f"flushing {len(self._in_flight)} change(s) failed: {exc}"
                (logger.warning if first else logger.debug)(
                    "write-behind: %s; retrying with backoff (%d staged)",
                    self._problem,
                    self.staged,
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max_ms / 1000)
                continue
            break
        if self._problem is not None:
            logger.warning("write-behind: the backend commits again")
        self._problem = None
        self.flushes += 1
        self._in_flight = []
        self._durable = last
        event, self._durable_event = self._durable_event, anyio.Event()
        event.set()
        room, self._room = self._room, anyio.Event()
        room.set()

    # --- re-encoding in place (RecodableBackend, forwarded) ----------------------------

    def _recodable(self) -> RecodableBackend:
        self._check_open()
        return recodable_under(self.backend, "write-behind")

    async def count_values(self) -> int:
        """The wrapped backend's count, once everything staged so far is flushed."""
        recodable = self._recodable()
        await self.wait_durable(self.durability_mark())
        return await recodable.count_values()

    async def scan_values(self, after: StoredValue | None, limit: int) -> list[StoredValue]:
        """The wrapped backend's scan, once everything staged so far is flushed (staged
        changes are encoded when they are flushed, with the codecs of that moment)."""
        recodable = self._recodable()
        await self.wait_durable(self.durability_mark())
        return await recodable.scan_values(after, limit)

    async def replace_values(self, replacements: Sequence[tuple[StoredValue, bytes]]) -> int:
        """The wrapped backend's compare and swap, once everything staged so far is
        flushed (so a write staged since the scan is what the swap compares with)."""
        recodable = self._recodable()
        await self.wait_durable(self.durability_mark())
        return await recodable.replace_values(replacements)

    # --- reads -------------------------------------------------------------------------

    async def list_maps(self) -> list[MapInfo]:
        self._check_open()
        kinds = {info.name: info.kind for info in await self.backend.list_maps()}
        kinds.update(self._kinds)
        return [MapInfo(name, kind) for name, kind in sorted(kinds.items())]

    async def load_map(self, name: str) -> MapSnapshot | None:
        return await self._load(name, None)

    async def load_keys(self, name: str, keys: Iterable[str]) -> MapSnapshot | None:
        return await self._load(name, list(keys))

    async def load_page(self, name: str, after: str | None, limit: int) -> MapPage | None:
        check_page_request(after, limit)
        self._check_open()
        if not isinstance(self.backend, PagedBackend):
            whole = await self._load(name, None)
            return None if whole is None else MapPage(whole, None)
        if any(not isinstance(c, PutMeta) and c.map_name == name for c in self._pending()):
            await self.wait_durable(self.durability_mark())
        return await self.backend.load_page(name, after, limit)

    def _pending(self) -> list[Change]:
        """Every change not yet known to be committed, oldest first."""
        return [*self._in_flight, *self._staged.values()]

    async def _load(self, name: str, keys: list[str] | None) -> MapSnapshot | None:
        self._check_open()
        pending = [c for c in self._pending() if not isinstance(c, PutMeta) and c.map_name == name]
        stored = (
            await self.backend.load_map(name)
            if keys is None
            else await self.backend.load_keys(name, keys)
        )
        if not pending:
            return stored
        # The contract's rules, applied by the memory backend: stored state, then pending.
        scratch = MemoryBackend()
        await scratch.initialize()
        await scratch.store_batch(_as_changes(stored) if stored is not None else [])
        await scratch.store_batch(pending)
        result = (
            await scratch.load_map(name) if keys is None else await scratch.load_keys(name, keys)
        )
        if result is None and stored is not None:
            return stored  # an empty stored map with no effective pending change
        return result

    async def load_meta(self, namespace: str) -> dict[str, bytes]:
        self._check_open()
        pending = [c for c in self._pending() if isinstance(c, PutMeta)]
        values = await self.backend.load_meta(namespace)
        for change in pending:
            if change.namespace != namespace:
                continue
            if change.value is None:
                values.pop(change.key, None)
            else:
                values[change.key] = change.value
        return dict(sorted(values.items()))


def _as_changes(snapshot: MapSnapshot) -> list[Change]:
    """Changes that rebuild `snapshot` in an empty backend."""
    if isinstance(snapshot, LWWSnapshot):
        return [PutRecord(snapshot.name, key, record) for key, record in snapshot.records.items()]
    assert isinstance(snapshot, ORSnapshot)
    changes: list[Change] = [
        AddORRecord(snapshot.name, key, record)
        for key, records in snapshot.records.items()
        for record in records
    ]
    changes += [RemoveORTag(snapshot.name, tag, key) for tag, key in snapshot.tombstones.items()]
    return changes


def wrap_write_behind(backend: StorageBackend, config: BackendConfig) -> StorageBackend:
    """The `write-behind` wrapper: settings from the `[write_behind]` section."""
    return WriteBehind(backend, config.section_as("write_behind", WriteBehindConfig))


@hookimpl
def register_storage_wrappers(register: Register[BackendWrapper]) -> None:
    """Register the built-in `write-behind` wrapper."""
    register("write-behind", wrap_write_behind)


@hookimpl
def register_config_sections(register: Register[type[msgspec.Struct]]) -> None:
    """The `[write_behind]` section (read only when the wrapper is configured)."""
    register("write_behind", WriteBehindConfig)
