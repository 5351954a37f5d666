"""Storage: writer throughput, lone-write commit latency, loading a map on start, sustained
PERSISTED writes per backend (with and without write-behind), and restart time.

    python3 dev.py run python bench/storage.py [--keys N] [--writers W] [--repeat R] [--dir D]
        [--persisted-keys P] [--restart-records M] [--quick]

Every write is its own submission (as a server submits each op), from W concurrent
writers, through `StorageWriter` (group commit, max 1,000 changes a transaction) into
SQLite (synchronous FULL, the default, and NORMAL), with and without a zlib codec, and
into the memory backend for comparison. Then: the latency of a lone write into an idle
writer (the commit of one change, fsync included), and the time to open the file and load
the whole map, as a server does before it reports ready. Data is deterministic; each
figure is the best of R runs. The database lives in a temporary directory under --dir
(default: the system temp directory), whose file system decides what an fsync costs.

Then, side by side: P PERSISTED writes (each waits for its commit, as the server's
PERSISTED acknowledgement does) from W writers into SQLite and PostgreSQL, each alone and
under the write-behind wrapper; and the restart time of a `Server` over M stored records
(open, load every map, ready), for SQLite and PostgreSQL. PostgreSQL is the test database
on 127.0.0.1:5432 (a schema made and dropped for the run); its rows are skipped, with the
reason, when it is unreachable. `--quick` makes every size small (a smoke run).
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
from typing import Any

import anyio

from topgun.crdt import LWWRecord, Timestamp
from topgun.hooks import make_plugin_manager
from topgun.server import ServerConfig, StorageConfig
from topgun.server.server import Server
from topgun.storage import (
    CodecPipeline,
    LWWSnapshot,
    MemoryBackend,
    PutRecord,
    SQLiteBackend,
    StorageBackend,
    StorageWriter,
    WriteBehind,
)
from topgun.testing import SERVICES, reachable

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


def postgres_config(schema: str) -> Any | None:
    """A `PostgresConfig` for the test database, or None when it cannot be used."""
    if not reachable(*SERVICES["postgres"]):
        return None
    try:
        from topgun_postgres import PostgresConfig
    except ImportError:
        return None
    host, port = SERVICES["postgres"]
    return PostgresConfig(dsn=f"postgresql://postgres@{host}:{port}/test", schema=schema)


def drop_schema(config: Any) -> None:
    from topgun_postgres.testing import drop_schema as drop

    anyio.run(drop, config.dsn, config.schema)


def persisted_setups(directory: Path, pg: Any | None) -> list[tuple[str, StorageBackend | None]]:
    """The four set-ups of the PERSISTED table (None: PostgreSQL unavailable)."""
    postgres: Callable[[], StorageBackend | None] = lambda: None  # noqa: E731
    if pg is not None:
        from topgun_postgres import PostgresBackend

        postgres = lambda: PostgresBackend(pg)  # noqa: E731
    pg_backend, pg_inner = postgres(), postgres()
    return [
        ("SQLite (FULL)", SQLiteBackend(directory / "plain.db")),
        ("SQLite (FULL) + write-behind", WriteBehind(SQLiteBackend(directory / "wb.db"))),
        ("PostgreSQL", pg_backend),
        ("PostgreSQL + write-behind", WriteBehind(pg_inner) if pg_inner is not None else None),
    ]


async def populate(backend: StorageBackend, records: int) -> None:
    """`records` LWW records in map `todos`, 10,000 a transaction."""
    await backend.initialize()
    everything = changes(records)
    for start in range(0, records, 10_000):
        await backend.store_batch(everything[start : start + 10_000])
    await backend.close()


async def restart(storage: StorageConfig, sections: dict[str, Any], data_dir: Path) -> float:
    """Seconds from starting a `Server` over the stored data to its being ready."""
    pm = make_plugin_manager(entry_points=(), environ={})
    if storage.backend == "postgres":
        import topgun_postgres.plugin

        pm.register(topgun_postgres.plugin, name="postgres")
    config = ServerConfig(data_dir=data_dir, storage=storage, sections=sections)
    start = time.perf_counter()
    async with Server(config, pm=pm) as server:
        elapsed = time.perf_counter() - start
        assert server.ready
        assert server.maps.kind("todos") == "lww"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--writers", type=int, default=100)
    parser.add_argument("--latency-writes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--persisted-keys", type=int, default=100_000)
    parser.add_argument("--restart-records", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.keys, args.persisted_keys, args.restart_records = 2_000, 2_000, 10_000
        args.latency_writes, args.repeat = 50, 1
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

    persisted(args)
    restarts(args)


def persisted(args: argparse.Namespace) -> None:
    keys = args.persisted_keys
    print(
        f"\nsustained PERSISTED writes: {keys:,} from {args.writers} writers, best of {args.repeat}"
    )
    print(f"{'backend':32} {'time':>9} {'writes/s':>10} {'transactions':>13}")
    pg = postgres_config("topgun_bench_persisted")
    work = changes(keys)
    best: dict[str, tuple[float, int]] = {}
    try:
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(dir=args.dir) as directory:
                for name, backend in persisted_setups(Path(directory), pg):
                    if backend is None:
                        continue
                    elapsed, transactions = anyio.run(write_all, backend, work, args.writers)
                    if elapsed < best.get(name, (float("inf"), 0))[0]:
                        best[name] = (elapsed, transactions)
                    if pg is not None:
                        drop_schema(pg)
    finally:
        if pg is not None:
            drop_schema(pg)
    for name, _ in persisted_setups(Path("."), None):
        if name not in best:
            print(f"{name:32} skipped: PostgreSQL unreachable or topgun-postgres not installed")
            continue
        elapsed, transactions = best[name]
        print(f"{name:32} {elapsed:8.3f}s {keys / elapsed:10,.0f} {transactions:13,}")


def restarts(args: argparse.Namespace) -> None:
    records = args.restart_records
    print(f"\nrestart with {records:,} records: Server start to ready, best of {args.repeat}")
    pg = postgres_config("topgun_bench_restart")
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        data_dir = Path(directory)
        setups: list[tuple[str, StorageConfig, dict[str, Any], StorageBackend | None]] = [
            (
                "SQLite",
                StorageConfig(backend="sqlite"),
                {},
                SQLiteBackend(data_dir / "topgun.db"),
            )
        ]
        if pg is not None:
            from topgun_postgres import PostgresBackend

            setups.append(
                (
                    "PostgreSQL",
                    StorageConfig(backend="postgres"),
                    {"postgres": pg},
                    PostgresBackend(pg),
                )
            )
        try:
            for name, storage, sections, backend in setups:
                assert backend is not None
                started = time.perf_counter()
                anyio.run(populate, backend, records)
                filled = time.perf_counter() - started
                best = min(
                    anyio.run(restart, storage, sections, data_dir) for _ in range(args.repeat)
                )
                print(
                    f"{name:32} {best:8.2f}s to ready {records / best:10,.0f} records/s"
                    f"   (writing them: {filled:.1f}s)"
                )
            if pg is None:
                print(f"{'PostgreSQL':32} skipped: PostgreSQL unreachable or not installed")
        finally:
            if pg is not None:
                drop_schema(pg)


if __name__ == "__main__":
    main()
