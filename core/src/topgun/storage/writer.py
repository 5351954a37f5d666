"""The storage writer: batches submitted changes into transactions (group commit).

The server submits the changes of each write as it happens and gets a `Commit` back
immediately; it reports the write-concern level PERSISTED only once `await
commit.wait()` returned, that is, once the transaction holding those changes committed.
One task commits: whatever was submitted while a transaction ran goes into the next one
(up to `max_batch` changes), so a busy server writes few, large transactions and an idle
one commits a lone write at once, with no timer involved.

- A submission is never split: its changes commit together or not at all.
- A failed transaction fails exactly the submissions it held, each with a
  `StorageWriteError` whose cause is the backend's error; the writer goes on with the next.
- The queue is bounded (`max_queued` changes): `submit` waits for room (backpressure).
- Leaving the `async with` block commits everything submitted before it (drains).
- Over a backend with `DeferredDurability` (write-behind), a `Commit` finishes only once
  the changes are durable in the backend behind it, not when they are staged; the
  committer goes on with the next transaction meanwhile.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from topgun.storage.contract import (
    Change,
    CheckedBatch,
    DeferredDurability,
    StorageBackend,
    check_batch,
)
from topgun.storage.errors import StorageClosedError, StorageWriteError


class Commit:
    """The outcome of one submitted batch: pending until its transaction ends."""

    __slots__ = ("_done", "_error", "_event", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        """The number of changes submitted."""
        self._done = False
        self._event: anyio.Event | None = None  # made by the first waiter: most never wait
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        """True once the transaction holding the batch committed or failed."""
        return self._done

    @property
    def error(self) -> BaseException | None:
        """Why the batch was not committed; `None` while pending or once committed."""
        return self._error

    def _finish(self, error: BaseException | None = None) -> None:
        self._error = error
        self._done = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        """Return once the batch is committed; raise `StorageWriteError` if it failed."""
        if not self._done:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        else:
            await anyio.lowlevel.checkpoint()
        if self._error is not None:
            raise StorageWriteError(
                f"the storage transaction holding {self.size} submitted change(s) failed: "
                f"{self._error}"
            ) from self._error


Submit = Callable[[Sequence[Change]], Awaitable[Commit]]
"""Submits changes to storage and returns their `Commit` (`StorageWriter.submit`)."""


class StorageWriter:
    """Commits submitted changes to `backend` in batched transactions (an async context
    manager: entering starts the committing task, leaving drains and stops it)."""

    def __init__(
        self,
        backend: StorageBackend,
        *,
        max_batch: int = 1000,
        max_queued: int = 10_000,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if max_batch < 1 or max_queued < 1:
            raise ValueError(
                f"max_batch and max_queued must be >= 1, not {max_batch}, {max_queued}"
            )
        self.backend = backend
        self.max_batch = max_batch
        """A transaction holds at most this many changes (unless one submission is larger)."""
        self.max_queued = max_queued
        """`submit` waits while this many changes wait for a transaction."""
        self.last_flush_seconds: float | None = None
        """How long the last transaction took (by `clock`), committed or failed."""
        self.last_flush_changes = 0
        """How many changes the last transaction held."""
        self.transactions = 0
        """How many transactions were attempted."""
        self.finished = 0
        """Counts transactions ending (committed, failed, or made durable later): it moves
        whenever some `Commit` may have finished."""
        self._clock = clock
        self._deferred = backend if isinstance(backend, DeferredDurability) else None
        self._durable_queue: deque[tuple[int, list[Commit]]] = deque()
        self._durable_wakeup = anyio.Event()
        self._durable_stopped = anyio.Event()
        self._queue: deque[tuple[list[Change], Commit]] = deque()
        self._queued = 0
        self._in_flight: list[Commit] = []
        self._task_group: TaskGroup | None = None
        self._closing = False
        # Set when the queue gains a submission or the writer closes (wakes the committer),
        # when the committer takes submissions off the queue (wakes full-queue waiters),
        # and when the committer has stopped.
        self._wakeup = anyio.Event()
        self._room = anyio.Event()
        self._stopped = anyio.Event()

    @property
    def queue_depth(self) -> int:
        """Changes submitted and not yet in a transaction."""
        return self._queued

    async def __aenter__(self) -> StorageWriter:
        if self._task_group is not None:
            raise RuntimeError("a StorageWriter can be entered only once")
        task_group = self._task_group = anyio.create_task_group()
        await task_group.__aenter__()
        task_group.start_soon(self._run)
        if self._deferred is not None:
            task_group.start_soon(self._run_durable, self._deferred)
        else:
            self._durable_stopped.set()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Drain, then stop. An exception of the block propagates as it is (the task group
        only sees one raised while draining, such as a cancellation)."""
        assert self._task_group is not None
        try:
            await self.close()
        except BaseException as error:
            if not await self._task_group.__aexit__(type(error), error, error.__traceback__):
                raise
        else:
            await self._task_group.__aexit__(None, None, None)

    async def close(self) -> None:
        """Refuse new submissions, commit every queued one, and wait until that is done."""
        if self._task_group is None:
            raise StorageClosedError("the storage writer was never started")
        self._closing = True
        self._wakeup.set()
        self._room.set()
        await self._stopped.wait()
        await self._durable_stopped.wait()

    async def submit(self, changes: Sequence[Change]) -> Commit:
        """Queue `changes` for the next transaction; return its `Commit` (await its
        `wait()` before reporting PERSISTED). Waits while the queue is full.

        A malformed batch raises `InvalidChangeError` here, for this submitter only.
        """
        if self._task_group is None or self._closing:
            raise StorageClosedError("the storage writer is not running")
        check_batch(changes)
        batch = list(changes)  # what was checked is what is committed
        await anyio.lowlevel.checkpoint()  # always yield (and take a cancellation) first
        if self._closing:
            raise StorageClosedError("the storage writer is not running")
        commit = Commit(len(batch))
        if not batch:
            commit._finish()
            return commit
        while self._queue and self._queued + len(batch) > self.max_queued and not self._closing:
            await self._room.wait()
        if self._closing:
            raise StorageClosedError("the storage writer closed while the batch waited")
        self._queue.append((batch, commit))
        self._queued += len(batch)
        self._wakeup.set()
        return commit

    async def write(self, changes: Sequence[Change]) -> None:
        """Submit `changes` and wait until they are committed."""
        commit = await self.submit(changes)
        await commit.wait()

    def _take(self) -> tuple[list[Change], list[Commit]]:
        """Whole submissions from the queue, up to `max_batch` changes (at least one), and
        wake the submitters waiting for room."""
        changes = CheckedBatch()  # each submission was checked by `submit`
        commits: list[Commit] = []
        while self._queue and (
            not commits or len(changes) + len(self._queue[0][0]) <= self.max_batch
        ):
            batch, commit = self._queue.popleft()
            changes.extend(batch)
            commits.append(commit)
        self._queued -= len(changes)
        room, self._room = self._room, anyio.Event()
        room.set()
        return changes, commits

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    continue
                changes, self._in_flight = self._take()
                await self._commit(changes, self._in_flight)
                self._in_flight = []
        finally:
            self._closing = True
            stopped = StorageClosedError(
                "the storage writer stopped before this batch's transaction ended; "
                "it may or may not have been committed"
            )
            for commit in self._in_flight:
                commit._finish(stopped)
            for _, commit in self._queue:
                commit._finish(StorageClosedError("the storage writer stopped"))
            self._queue.clear()
            self._queued = 0
            self._room.set()
            self._stopped.set()
            self._durable_wakeup.set()

    async def _commit(self, changes: list[Change], commits: list[Commit]) -> None:
        started = self._clock()
        self.transactions += 1
        try:
            await self.backend.store_batch(changes)
        except Exception as exc:  # any backend failure fails this transaction only
            for commit in commits:
                commit._finish(exc)
        else:
            if self._deferred is None:
                for commit in commits:
                    commit._finish()
            else:
                self._durable_queue.append((self._deferred.durability_mark(), commits))
                self._durable_wakeup.set()
        finally:
            self.last_flush_seconds = self._clock() - started
            self.last_flush_changes = len(changes)
            self.finished += 1

    async def _run_durable(self, backend: DeferredDurability) -> None:
        """Finish staged transactions' commits, in order, once each is durable."""
        try:
            while True:
                if not self._durable_queue:
                    if self._stopped.is_set():
                        return
                    await self._durable_wakeup.wait()
                    self._durable_wakeup = anyio.Event()
                    continue
                mark, commits = self._durable_queue[0]
                try:
                    await backend.wait_durable(mark)
                except Exception as exc:
                    for commit in commits:
                        commit._finish(exc)
                else:
                    for commit in commits:
                        commit._finish()
                self._durable_queue.popleft()
                self.finished += 1
        finally:
            stopped = StorageClosedError(
                "the storage writer stopped before this batch was durable; "
                "it may or may not have been committed"
            )
            for _, commits in self._durable_queue:
                for commit in commits:
                    commit._finish(stopped)
            self._durable_queue.clear()
            self._durable_stopped.set()
