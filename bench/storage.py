"""Storage: writer throughput, lone-write commit latency, and loading a map on start.

    python3 dev.py run python bench/storage.py [--keys N] [--writers W] [--repeat R] [--dir D]

Every write is its own submission (as a server submits each op), from W concurrent
writers, through `StorageWriter` (group commit, max 1,000 changes a transaction) into
SQLite (synchronous FULL, the default, and NORMAL), with and without a zlib codec, and
into the memory backend for comparison. Then: the latency of a lone write into an idle
writer (the commit of one change, fsync included), and the time to open the file and load
the whole map, as a server does before it reports ready. Data is deterministic; each
figure is the best of R runs. The database lives in a temporary directory under --dir
(default: the system temp directory), whose file system decides what an fsync costs.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import anyio

from topgun.crdt import LWWRecord, Timestamp
from topgun.storage import (
    CodecPipeline,
    LWWSnapshot,
    MemoryBackend,
    PutRecord,
    SQLiteBackend,
    StorageBackend,
    StorageWriter,
)

T0 = 1_700_000_000_000


class Zlib:
    def encode(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decode(self, data: bytes) -> bytes:
        return zlib.decompress(data)


def changes(keys: int) -> list[PutRecord]:
    return [
        PutRecord(
            "todos",
            f"todo-{i:07}",
            LWWRecord(
                {"title": f"task number {i}", "done": i % 3 == 0, "tags": ["a", "b"]},
                Timestamp(T0 + i, i % 5, f"node-{i % 8}"),
                60_000 if i % 10 == 0 else None,
            ),
        )
        for i in range(keys)
    ]


async def write_all(
    backend: StorageBackend, batch: list[PutRecord], writers: int
) -> tuple[float, int]:
    """Submit every change as its own submission from `writers` tasks; wait for all."""
    await backend.initialize()
    async with StorageWriter(backend, max_batch=1000, max_queued=10_000) as writer:
        start = time.perf_counter()

        async def writer_task(first: int) -> None:
            commits = [await writer.submit([change]) for change in batch[first::writers]]
            for commit in commits:
                await commit.wait()

        async with anyio.create_task_group() as tg:
            for first in range(writers):
                tg.start_soon(writer_task, first)
        elapsed = time.perf_counter() - start
    await backend.close()
    return elapsed, writer.transactions


async def lone_write_latencies(backend: StorageBackend, count: int) -> list[float]:
    await backend.initialize()
    latencies = []
    async with StorageWriter(backend) as writer:
        for change in changes(count):
            start = time.perf_counter()
            await writer.write([change])
            latencies.append(time.perf_counter() - start)
    await backend.close()
    return latencies


async def load_all(path: Path, keys: int) -> tuple[float, float]:
    start = time.perf_counter()
    backend = SQLiteBackend(path)
    await backend.initialize()
    opened = time.perf_counter()
    snapshot = await backend.load_map("todos")
    loaded = time.perf_counter()
    await backend.close()
    assert isinstance(snapshot, LWWSnapshot)
    assert len(snapshot.records) == keys
    return opened - start, loaded - opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--writers", type=int, default=100)
    parser.add_argument("--latency-writes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    batch = changes(args.keys)
    print(f"Storage: {args.keys:,} LWW writes from {args.writers} writers, best of {args.repeat}")
    print(f"Python {platform.python_version()} on {platform.machine()}\n")

    setups: list[tuple[str, Callable[[Path], StorageBackend]]] = [
        ("SQLite, synchronous=FULL", lambda d: SQLiteBackend(d / "topgun.db")),
        (
            "SQLite, synchronous=NORMAL",
            lambda d: SQLiteBackend(d / "topgun.db", synchronous="normal"),
        ),
        (
            "SQLite FULL + zlib codec",
            lambda d: SQLiteBackend(d / "topgun.db", codecs=CodecPipeline([("zlib", Zlib())])),
        ),
        ("memory", lambda d: MemoryBackend()),
    ]
    print(f"{'writer throughput':32} {'time':>9} {'writes/s':>10} {'transactions':>13}")
    for name, make in setups:
        best, transactions = float("inf"), 0
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(dir=args.dir) as directory:
                elapsed, transactions = anyio.run(
                    write_all, make(Path(directory)), batch, args.writers
                )
            best = min(best, elapsed)
        print(f"{name:32} {best:8.3f}s {args.keys / best:10,.0f} {transactions:13,}")

    print(f"\n{'lone write, idle writer':32} {'median':>9} {'p99':>9}")
    for name, make in setups[:2]:
        with tempfile.TemporaryDirectory(dir=args.dir) as directory:
            latencies = anyio.run(lone_write_latencies, make(Path(directory)), args.latency_writes)
        p99 = statistics.quantiles(latencies, n=100)[98]
        print(f"{name:32} {statistics.median(latencies) * 1e3:7.2f}ms {p99 * 1e3:7.2f}ms")

    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        path = Path(directory) / "topgun.db"
        anyio.run(write_all, SQLiteBackend(path), batch, args.writers)
        size = path.stat().st_size
        timings = [anyio.run(load_all, path, args.keys) for _ in range(args.repeat)]
    opened = min(t[0] for t in timings)
    loaded = min(t[1] for t in timings)
    print(f"\nstart-up with {args.keys:,} keys ({size / 2**20:.1f} MiB file)")
    print(f"{'open + migrate check':32} {opened * 1e3:8.1f}ms")
    rate = args.keys / loaded
    print(f"{'load_map (decode every value)':32} {loaded * 1e3:8.1f}ms {rate:10,.0f} records/s")


if __name__ == "__main__":
    main()
