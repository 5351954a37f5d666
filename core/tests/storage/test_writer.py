"""The storage writer: group commit, completions per submission, failures, backpressure."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import anyio
import pytest

from topgun.crdt import LWWRecord, Timestamp
from topgun.storage import (
    Change,
    Commit,
    InvalidChangeError,
    LWWSnapshot,
    MemoryBackend,
    PutRecord,
    StorageClosedError,
    StorageError,
    StorageWriteError,
    StorageWriter,
)

pytestmark = pytest.mark.anyio


def put(key: str) -> PutRecord:
    return PutRecord("m", key, LWWRecord(key, Timestamp(1, 0, "n")))


def keys_of(changes: Sequence[Change]) -> list[str]:
    return [c.key for c in changes if isinstance(c, PutRecord)]


class GatedBackend(MemoryBackend):
    """A memory backend whose transactions wait for `gate` (when closed) and fail when they
    hold a key starting with "poison"; it records the keys of each transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.transactions: list[list[str]] = []
        self.gate: anyio.Event | None = None

    def close_gate(self) -> None:
        self.gate = anyio.Event()

    def open_gate(self) -> None:
        assert self.gate is not None
        self.gate.set()
        self.gate = None

    async def store_batch(self, changes: Sequence[Change]) -> None:
        self.transactions.append(keys_of(changes))
        if self.gate is not None:
            await self.gate.wait()
        if any(key.startswith("poison") for key in keys_of(changes)):
            raise StorageError("disk on fire")
        await super().store_batch(changes)

    async def stored_keys(self) -> list[str]:
        snapshot = await self.load_map("m")
        return [] if snapshot is None else sorted(snapshot.records)


@pytest.fixture
async def backend() -> GatedBackend:
    backend = GatedBackend()
    await backend.initialize()
    return backend


async def test_concurrent_submitters_each_get_their_completion(backend: GatedBackend) -> None:
    async with StorageWriter(backend) as writer:

        async def submitter(n: int) -> None:
            await writer.write([put(f"{n}-a"), put(f"{n}-b")])
            # Completed means committed: the backend holds this submitter's keys.
            assert {f"{n}-a", f"{n}-b"} <= set(await backend.stored_keys())

        async with anyio.create_task_group() as tg:
            for n in range(30):
                tg.start_soon(submitter, n)
    assert len(await backend.stored_keys()) == 60
    assert writer.transactions == len(backend.transactions) < 30


async def test_changes_submitted_during_a_transaction_go_into_the_next(
    backend: GatedBackend,
) -> None:
    backend.close_gate()
    async with StorageWriter(backend) as writer:
        first = await writer.submit([put("a")])
        await anyio.wait_all_tasks_blocked()
        assert backend.transactions == [["a"]]
        later = [await writer.submit([put(k)]) for k in "bcd"]
        assert writer.queue_depth == 3
        assert not first.done
        backend.open_gate()
        for commit in (first, *later):
            await commit.wait()
    assert backend.transactions == [["a"], ["b", "c", "d"]]


async def test_a_transaction_holds_whole_submissions_up_to_max_batch(
    backend: GatedBackend,
) -> None:
    backend.close_gate()
    async with StorageWriter(backend, max_batch=3) as writer:
        await writer.submit([put("a")])
        await anyio.wait_all_tasks_blocked()
        await writer.submit([put("b1"), put("b2")])
        await writer.submit([put("c1"), put("c2")])
        await writer.submit([put(f"d{i}") for i in range(5)])  # larger than max_batch
        await writer.submit([put("e")])
        backend.open_gate()
    assert backend.transactions == [
        ["a"],
        ["b1", "b2"],
        ["c1", "c2"],
        ["d0", "d1", "d2", "d3", "d4"],
        ["e"],
    ]


async def test_a_failed_transaction_fails_exactly_its_submitters(backend: GatedBackend) -> None:
    backend.close_gate()
    async with StorageWriter(backend) as writer:
        ok_before = await writer.submit([put("a")])
        await anyio.wait_all_tasks_blocked()
        innocent = await writer.submit([put("b")])
        culprit = await writer.submit([put("poison"), put("c")])
        backend.open_gate()
        await ok_before.wait()
        for failed in (innocent, culprit):
            with pytest.raises(StorageWriteError, match="disk on fire") as caught:
                await failed.wait()
            assert isinstance(caught.value.__cause__, StorageError)
            assert failed.error is caught.value.__cause__
        ok_after = await writer.submit([put("d")])
        await ok_after.wait()
    assert backend.transactions == [["a"], ["b", "poison", "c"], ["d"]]
    assert await backend.stored_keys() == ["a", "d"]
    assert ok_before.error is None


async def test_submit_waits_while_the_queue_is_full(backend: GatedBackend) -> None:
    backend.close_gate()
    submitted: list[Commit] = []
    async with StorageWriter(backend, max_queued=2) as writer:
        await writer.submit([put("in-flight")])
        await anyio.wait_all_tasks_blocked()
        await writer.submit([put("q1"), put("q2")])  # the queue is now full

        async def late() -> None:
            submitted.append(await writer.submit([put("late")]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(late)
            await anyio.wait_all_tasks_blocked()
            assert submitted == []
            assert writer.queue_depth == 2
            backend.open_gate()
        await submitted[0].wait()
    assert backend.transactions == [["in-flight"], ["q1", "q2"], ["late"]]


async def test_a_batch_larger_than_the_queue_is_taken_when_the_queue_is_empty(
    backend: GatedBackend,
) -> None:
    async with StorageWriter(backend, max_queued=2) as writer:
        await writer.write([put(k) for k in "abcde"])
    assert await backend.stored_keys() == list("abcde")


async def test_leaving_the_block_commits_every_submission(backend: GatedBackend) -> None:
    async with StorageWriter(backend, max_batch=4) as writer:
        commits = [await writer.submit([put(f"k{i}")]) for i in range(10)]
        assert not all(commit.done for commit in commits)
    assert all(commit.done and commit.error is None for commit in commits)
    assert len(await backend.stored_keys()) == 10
    with pytest.raises(StorageClosedError):
        await writer.submit([put("late")])


async def test_leaving_the_block_with_an_error_still_commits(backend: GatedBackend) -> None:
    commits: list[Commit] = []

    async def fail_after_submitting() -> None:
        async with StorageWriter(backend) as writer:
            commits.append(await writer.submit([put("a")]))
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):  # as it is, not in an exception group
        await fail_after_submitting()
    [commit] = commits
    assert commit.done
    assert commit.error is None
    assert await backend.stored_keys() == ["a"]


async def test_a_malformed_batch_fails_only_its_submitter(backend: GatedBackend) -> None:
    async with StorageWriter(backend) as writer:
        with pytest.raises(InvalidChangeError, match="change #0"):
            await writer.submit([PutRecord("m", 5, LWWRecord(1, Timestamp(1, 0, "n")))])  # type: ignore[arg-type]
        assert writer.queue_depth == 0
        await writer.write([put("fine")])
    assert await backend.stored_keys() == ["fine"]


async def test_an_empty_batch_completes_at_once(backend: GatedBackend) -> None:
    async with StorageWriter(backend) as writer:
        commit = await writer.submit([])
        assert commit.done
        await commit.wait()
    assert backend.transactions == []


async def test_flush_metrics(backend: GatedBackend) -> None:
    ticks: Iterator[float] = iter([10.0, 10.25])
    async with StorageWriter(backend, clock=lambda: next(ticks)) as writer:
        assert writer.last_flush_seconds is None
        await writer.write([put("a"), put("b")])
        assert writer.last_flush_seconds == 0.25
        assert writer.last_flush_changes == 2
        assert writer.transactions == 1


async def test_cancelling_the_writer_fails_what_it_holds(backend: GatedBackend) -> None:
    backend.close_gate()
    with anyio.CancelScope() as scope:
        async with StorageWriter(backend) as writer:
            in_flight = await writer.submit([put("a")])
            await anyio.wait_all_tasks_blocked()
            queued = await writer.submit([put("b")])
            scope.cancel()
    assert isinstance(in_flight.error, StorageClosedError)
    assert "may or may not have been committed" in str(in_flight.error)
    assert isinstance(queued.error, StorageClosedError)
    with pytest.raises(StorageWriteError, match="stopped"):
        await queued.wait()


async def test_misuse_is_an_error(backend: GatedBackend) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        StorageWriter(backend, max_batch=0)
    writer = StorageWriter(backend)
    with pytest.raises(StorageClosedError, match="not running"):
        await writer.submit([put("a")])
    with pytest.raises(StorageClosedError, match="never started"):
        await writer.close()
    async with writer:
        with pytest.raises(RuntimeError, match="only once"):
            await writer.__aenter__()
    assert isinstance(await backend.load_map("m") or LWWSnapshot("m", {}), LWWSnapshot)
