"""Tiered storage: read latency per tier, and memory against the budget over a 5x map.

    python3 dev.py run python bench/tiered.py [--budget-mib M] [--small] [--reads N] [--dir D]

A `MapRegistry` (the server's maps) over the `tiered` wrapper with a budget of M MiB
(default 64; `--small`: 4) is filled, one committed write at a time, with a map whose
values are 5x the budget (1 KiB values), then:

1. read latency, p50/p99 of N single-key reads (`holding` + `get`, as a request does):
   hot hits; cold loads from SQLite; cold loads from PostgreSQL when a `postgres` storage
   plugin is installed and PostgreSQL is reachable (else the line says why not); first
   reads of archived maps (restore of a 1,000-key map from the archive directory, then
   the read); first reads of archived keys of a live map (restore of the key's 100- or
   1,000-key segment, then the read; the manifest lists every archived key);
2. the write path with and without the wrapper: ops per CPU-second of the server's write
   pipeline (the journal on, so a write to a cold key loads its old value), with no
   tiering, with a budget never reached, and with a 200 KiB budget that evicts;
3. memory: the process RSS (from /proc) before the fill, at its highest during the fill
   and during a scan that reads every key, next to the budget and the map's size, the
   values in memory as the budget counts them, and the RSS growth of a fresh process
   that fills the same map with no budget;
4. start-up: a fresh process loads the filled database (the map 5x the budget), with the
   budget (page by page, evicting between pages) and without one (whole maps), side by
   side: seconds to load, the peak RSS growth while loading (VmHWM), and the most values
   the budget's accounting held at once.

Linux only (/proc). Each figure comes from one run; the database and archive live in a
temporary directory under --dir (default: the system temp directory).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import topgun_tiered.plugin
from topgun_tiered import TieredBackend

from topgun.crdt import HLC, LWWRecord, Timestamp
from topgun.hooks import collect_registrations, make_plugin_manager
from topgun.protocol import ClientOp
from topgun.server import AuthConfig, Secret, Server, ServerConfig, StorageConfig
from topgun.server.auth import TokenPrincipal
from topgun.server.maps import MapRegistry
from topgun.server.writes import WriteContext
from topgun.storage import (
    MemoryBackend,
    StorageBackend,
    StorageWriter,
    open_storage,
    value_size,
)
from topgun.testing import reachable

T0 = 1_700_000_000_000
MIB = 1 << 20


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def value(i: int) -> dict[str, Any]:
    return {"n": i, "title": f"row {i}", "body": "lorem ipsum dolor sit amet " * 30}


def pm() -> Any:
    manager = make_plugin_manager(entry_points=None, environ={})
    if not any(p is topgun_tiered.plugin for p in manager.get_plugins()):
        manager.register(topgun_tiered.plugin, name="tiered")
    return manager


def percentiles(samples: list[float]) -> str:
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return f"{p50 * 1e6:10,.0f} {p99 * 1e6:10,.0f}"


class Bench:
    def __init__(self, backend: StorageBackend) -> None:
        self.backend = backend
        self.maps = MapRegistry(HLC("bench", lambda: int(time.time() * 1000)))

    async def open(self) -> None:
        await self.backend.initialize()
        assert isinstance(self.backend, TieredBackend)
        self.maps.set_budget(self.backend.memory_budget)
        await self.maps.load(self.backend)

    async def fill(self, name: str, keys: int, sample: Callable[[], None]) -> None:
        """Write `keys` values, each its own committed transaction batch of 100."""
        async with StorageWriter(self.backend) as writer:
            self.maps.writer = writer
            for start in range(0, keys, 100):
                with self.maps.recording() as recording:
                    for i in range(start, min(start + 100, keys)):
                        stamp = Timestamp(T0, i, "writer")
                        self.maps.merge_lww(name, f"k{i:07}", LWWRecord(value(i), stamp))
                commit = await self.maps.persist(recording)
                assert commit is not None
                await commit.wait()
                sample()
            self.maps.writer = None

    async def read(self, name: str, key: str) -> float:
        began = time.perf_counter()
        async with self.maps.holding(name, (key,)):
            lww = self.maps.lww(name)
            assert lww is not None
            found = lww.get(key)
        elapsed = time.perf_counter() - began
        assert found is not None, key
        assert found["n"] == int(key[1:]), key
        return elapsed


async def timed(reads: list[Callable[[], Awaitable[float]]]) -> list[float]:
    return [await read() for read in reads]


async def run(budget_mib: int, reads: int, workdir: Path) -> None:
    budget = budget_mib * MIB
    per_value = value_size(value(0))
    keys = 5 * budget // per_value
    data_dir = workdir / "sqlite"
    options = {"budget": budget, "archive": "archive"}
    backend = open_storage(
        pm(),
        data_dir=data_dir,
        backend="sqlite",
        options={"synchronous": "normal"},
        wrappers=["tiered"],
        wrapper_options={"tiered": options},
    )
    bench = Bench(backend)
    await bench.open()
    before = rss_bytes()
    highest = [before]

    def sample() -> None:
        highest[0] = max(highest[0], rss_bytes())

    began = time.perf_counter()
    await bench.fill("big", keys, sample)
    fill_seconds = time.perf_counter() - began
    fill_rss = highest[0]
    hot = bench.maps.hot
    assert hot is not None
    lww = bench.maps.lww("big")
    assert lww is not None
    print(
        f"map: {keys:,} keys of ~{per_value:,} B = {keys * per_value / MIB:,.0f} MiB of values; "
        f"budget {budget_mib} MiB (evict at 85% down to 70%); filled in {fill_seconds:.1f}s"
    )

    # Scan every key, 500 at a time, as a query or a full sync would.
    highest[0] = rss_bytes()
    scan_began = time.perf_counter()
    most_used = 0
    names = [f"k{i:07}" for i in range(keys)]
    for start in range(0, keys, 500):
        chunk = names[start : start + 500]
        async with bench.maps.holding("big", chunk):
            for key in chunk:
                assert lww.get(key)["n"] == int(key[1:])
        most_used = max(most_used, hot.used)
        sample()
    scan_seconds = time.perf_counter() - scan_began
    print(f"\n{'memory':40} {'MiB':>10}")
    print(f"{'budget':40} {budget / MIB:10,.1f}")
    print(f"{'map values (estimated)':40} {keys * per_value / MIB:10,.1f}")
    print(f"{'RSS before the fill':40} {before / MIB:10,.1f}")
    print(f"{'RSS highest during the fill':40} {fill_rss / MIB:10,.1f}")
    print(f"{'RSS highest during the scan':40} {highest[0] / MIB:10,.1f}")
    print(f"{'values in memory, highest (estimate)':40} {most_used / MIB:10,.1f}")
    grown = unbounded_growth(keys)
    print(f"{'RSS growth, same map without a budget':40} {grown / MIB:10,.1f}")
    print(f"{'RSS growth, fill + scan with the budget':40} {(highest[0] - before) / MIB:10,.1f}")
    print(
        f"\nscan: {keys:,} keys in {scan_seconds:.1f}s ({keys / scan_seconds:,.0f} keys/s), "
        f"{hot.loads:,} cold loads, {hot.evictions:,} evictions"
    )

    ops = 4000 if budget_mib <= 4 else 20_000
    print(f"\n{'write path (OP_BATCH of 10 puts, memory storage)':50} {'ops/CPU-s':>10}")
    for label, wrapper in (
        ("no tiering", None),
        ("tiered, budget not reached", {"budget": "1GiB"}),
        ("tiered, 200 KiB budget: evicting, loads", {"budget": "200KiB"}),
    ):
        print(f"{label:50} {await write_rate(wrapper, ops):10,.0f}")

    rng = random.Random(7)
    cold = sorted(lww.cold_keys())
    hot_keys = [entry[1] for entry in list(hot.lru)[-reads:]]
    print(f"\n{'read latency (µs)':40} {'p50':>10} {'p99':>10}")
    samples = await timed([lambda k=k: bench.read("big", k) for k in hot_keys])
    print(f"{'hot hit':40} {percentiles(samples)}")
    picked = rng.sample(cold, min(reads, len(cold)))
    samples = await timed([lambda k=k: bench.read("big", k) for k in picked])
    print(f"{'cold load, SQLite':40} {percentiles(samples)}")
    await postgres_line(reads, workdir)
    await archive_line(workdir)
    await archived_keys_lines(workdir, small=budget_mib <= 4)

    await backend.close()
    startup_lines(data_dir, budget)


def startup_lines(data_dir: Path, budget: int) -> None:
    """Start-up of the filled database in fresh processes, without and with the budget."""
    print(f"\n{'start-up (fresh process)':40} {'seconds':>10} {'peak RSS':>10} {'values':>10}")
    print(f"{'':40} {'':>10} {'MiB':>10} {'MiB':>10}")
    for label, limit in (
        ("no budget: whole maps", 0),
        (f"budget {budget / MIB:g} MiB: by page", budget),
    ):
        result = subprocess.run(
            [sys.executable, __file__, "--startup", str(data_dir), "--startup-budget", str(limit)],
            check=True,
            capture_output=True,
            text=True,
        )
        seconds, grown, held = result.stdout.split()
        values = "n/a" if held == "-" else f"{int(held) / MIB:,.1f}"
        print(f"{label:40} {float(seconds):10.2f} {int(grown) / MIB:10,.1f} {values:>10}")


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


async def start_up(data_dir: Path, budget: int) -> None:
    """Load every map of the SQLite database in `data_dir` as the server starts (with a
    budget of `budget` bytes, none when 0); print seconds, peak RSS growth and the most
    values held (`-` without a budget)."""
    wrappers = {"wrappers": ["tiered"], "wrapper_options": {"tiered": {"budget": budget}}}
    backend = open_storage(
        pm(),
        data_dir=data_dir,
        backend="sqlite",
        options={"synchronous": "normal"},
        **(wrappers if budget else {}),
    )
    await backend.initialize()
    maps = MapRegistry(HLC("bench", lambda: int(time.time() * 1000)))
    if budget:
        assert isinstance(backend, TieredBackend)
        maps.set_budget(backend.memory_budget)
    before = rss_bytes()
    began = time.perf_counter()
    await maps.load(backend)
    seconds = time.perf_counter() - began
    grown = peak_rss_bytes() - before
    held = "-" if maps.hot is None else str(maps.hot.peak)
    print(f"{seconds} {grown} {held}")
    await backend.close()


async def postgres_line(reads: int, workdir: Path) -> None:
    label = "cold load, PostgreSQL"
    manager = pm()
    if "postgres" not in collect_registrations(manager.hook.register_storage):
        print(f"{label:40} {'n/a':>10} {'n/a':>10}  (no postgres storage plugin installed)")
        return
    if not reachable("127.0.0.1", 5432):
        print(f"{label:40} {'n/a':>10} {'n/a':>10}  (PostgreSQL not reachable on :5432)")
        return
    from topgun_postgres import PostgresConfig
    from topgun_postgres.testing import drop_schema

    user = os.environ.get("PGUSER", "postgres")
    dsn = f"postgresql://{user}@127.0.0.1:5432/test"
    schema = f"bench_tiered_{os.getpid()}"
    backend = open_storage(
        manager,
        data_dir=workdir / "pg",
        backend="postgres",
        wrappers=["tiered"],
        wrapper_options={"tiered": {"budget": "1MiB"}},
        sections={"postgres": PostgresConfig(dsn=dsn, schema=schema)},
    )
    try:
        bench = Bench(backend)
        await bench.open()
        name = "big"
        await bench.fill(name, 5 * MIB // value_size(value(0)), lambda: None)
        lww = bench.maps.lww(name)
        assert lww is not None
        picked = random.Random(7).sample(sorted(lww.cold_keys()), reads)
        samples = await timed([lambda k=k: bench.read(name, k) for k in picked])
        print(f"{label:40} {percentiles(samples)}  (database `test`, a scratch schema)")
        await backend.close()
    finally:
        await drop_schema(dsn, schema)


async def archive_line(workdir: Path) -> None:
    """First reads of 20 archived 1,000-key maps: restore, load, read."""
    data_dir = workdir / "archived"
    wrapper_options = {"tiered": {"budget": "64MiB"}}

    def backend() -> StorageBackend:
        return open_storage(
            pm(),
            data_dir=data_dir,
            backend="sqlite",
            options={"synchronous": "normal"},
            wrappers=["tiered"],
            wrapper_options=wrapper_options,
        )

    filling = Bench(backend())
    await filling.open()
    names = [f"archived-{i:02}" for i in range(20)]
    for name in names:
        await filling.fill(name, 1000, lambda: None)
    tiered = filling.backend
    assert isinstance(tiered, TieredBackend)
    for name in names:
        await tiered.archive_map(name)
    stored = sum(info.stored_bytes for info in tiered.archive.manifest.maps.values())
    await tiered.close()
    reading = Bench(backend())
    await reading.open()
    samples = await timed([lambda n=n: reading.read(n, "k0000500") for n in names])
    label = "archived map: restore 1,000 keys + read"
    print(f"{label:40} {percentiles(samples)}  ({stored / len(names) / 1024:,.0f} KiB a segment)")
    await reading.backend.close()


async def archived_keys_lines(workdir: Path, *, small: bool) -> None:
    """First reads of archived keys of one live map: each read names a key of a segment
    not restored yet, so it restores that segment (100 or 1,000 keys), then reads."""
    data_dir = workdir / "archived-keys"
    backend = open_storage(
        pm(),
        data_dir=data_dir,
        backend="sqlite",
        options={"synchronous": "normal"},
        wrappers=["tiered"],
        wrapper_options={"tiered": {"budget": "64MiB"}},
    )
    bench = Bench(backend)
    await bench.open()
    tiered = bench.backend
    assert isinstance(tiered, TieredBackend)
    plan = [(100, 2_000 if small else 10_000), (1_000, 10_000 if small else 50_000)]
    total = sum(count for _, count in plan)
    await bench.fill("aged", total, lambda: None)
    firsts: dict[int, list[str]] = {}
    start = 0
    archived_at = time.perf_counter()
    for size, count in plan:
        for begin in range(start, start + count, size):
            chunk = [f"k{i:07}" for i in range(begin, begin + size)]
            moved = await tiered.archive_keys("aged", chunk)
            assert moved is not None
            bench.maps.evict_stored("aged", moved.stamps)
            firsts.setdefault(size, []).append(chunk[size // 2])
        start += count
    archive_seconds = time.perf_counter() - archived_at
    keys, stored = tiered.archived_totals()
    for size, picked in firsts.items():
        samples = await timed([lambda k=k: bench.read("aged", k) for k in picked])
        label = f"archived key: restore {size:,} keys + read"
        print(f"{label:40} {percentiles(samples)}  ({len(picked)} reads)")
    print(
        f"(archived keys of one live map: {keys:,} archived in {archive_seconds:.1f}s, "
        f"{stored / MIB:,.1f} MiB of segments; each read restores its key's segment)"
    )
    await backend.close()


async def write_rate(wrappers: dict[str, Any] | None, ops: int) -> float:
    """Ops per CPU-second of `WritePipeline.apply` (batches of 10 puts over 5,000 keys) on
    a started server with memory storage, wrapped in `tiered` with these options if given;
    best of 3 (CPU time, so other processes on the machine count less)."""
    storage = StorageConfig(backend="memory")
    if wrappers is not None:
        storage = StorageConfig(
            backend="memory", wrappers=("tiered",), wrapper_options={"tiered": wrappers}
        )
    with tempfile.TemporaryDirectory() as data_dir:
        config = ServerConfig(
            data_dir=Path(data_dir),
            node_id="bench",
            storage=storage,
            auth=AuthConfig(jwt_secret=Secret("bench-secret-" + "x" * 32)),
        )
        manager = make_plugin_manager(entry_points=(), environ={})
        manager.register(topgun_tiered.plugin, name="tiered")
        async with Server(config, pm=manager) as server:
            context = WriteContext(
                TokenPrincipal.from_claims({"sub": "b", "roles": ["ADMIN"]}), None
            )
            stamp = int(time.time() * 1000)
            best, n = 0.0, 0
            for _ in range(3):
                batches = []
                for _ in range(ops // 10):
                    batch = []
                    for _ in range(10):
                        n += 1
                        record = LWWRecord({"v": n, "t": "x" * 40}, Timestamp(stamp, n, "c"))
                        batch.append(ClientOp(map_name="m", key=f"k{n % 5000}", record=record))
                    batches.append(batch)
                began = time.process_time()
                for batch in batches:
                    request = await server.writes.apply(batch, context, origin=None)
                    await server.writes.settle(request, context)
                best = max(best, ops / (time.process_time() - began))
    return best


def unbounded_growth(keys: int) -> int:
    """RSS growth of a fresh process that fills the same map with no budget (memory
    storage): what the budget saves."""
    result = subprocess.run(
        [sys.executable, __file__, "--unbounded", str(keys)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(result.stdout.strip())


async def fill_unbounded(keys: int) -> None:
    maps = MapRegistry(HLC("bench", lambda: int(time.time() * 1000)))
    backend = MemoryBackend()
    await backend.initialize()
    await maps.load(backend)
    before = rss_bytes()
    bench = Bench(backend)
    bench.maps = maps
    await bench.fill("big", keys, lambda: None)
    print(rss_bytes() - before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-mib", type=int, default=64)
    parser.add_argument("--small", action="store_true", help="a 4 MiB budget: a quick run")
    parser.add_argument("--reads", type=int, default=2000, help="reads per latency figure")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go")
    parser.add_argument("--unbounded", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--startup", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--startup-budget", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.unbounded:
        anyio.run(fill_unbounded, args.unbounded)
        return
    if args.startup:
        anyio.run(start_up, args.startup, args.startup_budget)
        return
    budget = 4 if args.small else args.budget_mib
    reads = min(args.reads, 500) if args.small else args.reads
    print(f"Tiered storage: a 5x-budget map over SQLite, budget {budget} MiB")
    print(f"Python {platform.python_version()} on {platform.machine()}\n")
    with tempfile.TemporaryDirectory(dir=args.dir) as workdir:
        anyio.run(run, budget, reads, Path(workdir))


if __name__ == "__main__":
    main()
