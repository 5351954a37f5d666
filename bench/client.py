"""Client: local write and read latency, and catching up after being offline.

    python3 dev.py run python bench/client.py [--writes N] [--keys K] [--repeat R]

1. Local latency of `map.set()` (the write applied in memory, appended to the oplog and
   queued for the store) and `map.get()`, per call, with `MemoryStore` and `SQLiteStore`,
   on a client with no server (writes only queue). For SQLite, also the cost of making
   them durable: `await client.flush()` after the N writes, per write, and the latency of
   one write followed by its own flush (a lone durable write).
2. Catch-up: a client synced K keys, went offline, every key changed on the server, and
   the client comes back: the time until its Merkle sync finished and the bytes it
   received, against a `topgun serve` process (memory storage) on this machine.

Every figure is the best of R runs (latency percentiles from the best run's samples).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import jwt

from topgun.client import Backoff, MemoryStore, SQLiteStore, Store, TopGunClient

OFFLINE = "ws://127.0.0.1:9"
"""Nothing listens there: the client stays offline and its writes only queue."""
IDLE = Backoff(initial=60, max_delay=60, jitter=0)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def local_latency(store: Store, writes: int) -> dict[str, float]:
    async with TopGunClient(OFFLINE, token="offline", store=store, backoff=IDLE) as client:
        m = client.map("bench")
        value = {"title": "a todo", "done": False, "n": 0}
        set_ns: list[float] = []
        clock = time.perf_counter_ns
        for i in range(writes):
            start = clock()
            m.set(f"k{i}", value)
            set_ns.append(clock() - start)
        flush_start = time.perf_counter()
        await client.flush()
        flush_s = time.perf_counter() - flush_start
        get_ns: list[float] = []
        for i in range(writes):
            start = clock()
            m.get(f"k{i}")
            get_ns.append(clock() - start)
        lone: list[float] = []
        for i in range(200):
            start = clock()
            m.set(f"lone{i}", value)
            await client.flush()
            lone.append(clock() - start)
    return {
        "set_p50": pct(set_ns, 0.5) / 1000,
        "set_p99": pct(set_ns, 0.99) / 1000,
        "get_p50": pct(get_ns, 0.5) / 1000,
        "flush_per_write": flush_s / writes * 1e6,
        "lone_durable_p50": pct(lone, 0.5) / 1000,
    }


@contextlib.contextmanager
def serve() -> Iterator[tuple[str, str]]:
    """`topgun serve` with memory storage on a free port: its URL and an ADMIN token."""
    secret = secrets.token_urlsafe(32)
    token = jwt.encode({"sub": "bench", "roles": ["ADMIN"]}, secret, algorithm="HS256")
    with tempfile.TemporaryDirectory() as data:
        process = subprocess.Popen(
            [sys.executable, "-m", "topgun", "serve", "--port", "0", "--storage", "memory"],
            cwd=data,
            env={**os.environ, "TOPGUN_AUTH_JWT_SECRET": secret, "TOPGUN_LOAD_PLUGINS": ""},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()  # "topgun … serving ws://127.0.0.1:PORT (…)"
            url = banner.split("serving ", 1)[1].split()[0]
            yield url, token
        finally:
            process.terminate()
            process.wait()


async def catch_up(keys: int) -> tuple[float, int, int]:
    with serve() as (url, token):
        store = MemoryStore()
        fast = Backoff(initial=0.01, max_delay=0.1)
        async with TopGunClient(url, token=token, backoff=fast) as writer:
            m = writer.map("catchup")
            for i in range(keys):
                m.set(f"key{i:06d}", {"v": 1, "i": i})
            await writer.settled()
            async with TopGunClient(url, token=token, store=store, backoff=fast) as reader:
                reader.map("catchup")
                await reader.settled()
            # The reader is offline now; every key changes on the server.
            for i in range(keys):
                m.set(f"key{i:06d}", {"v": 2, "i": i})
            await writer.settled()
        start = time.perf_counter()
        async with TopGunClient(url, token=token, store=store, backoff=fast) as reader:
            r = reader.map("catchup")
            await reader.settled()
            seconds = time.perf_counter() - start
            sent, received = reader.traffic
            assert all(value["v"] == 2 for _, value in r.items()), "catch-up incomplete"
            assert len(r.items()) == keys
    return seconds, received, sent


async def main(args: argparse.Namespace) -> None:
    print(f"Client benchmarks, best of {args.repeat}")
    print(f"Python {platform.python_version()} on {platform.machine()}\n")
    print(f"1. local latency, {args.writes:,} writes of a 3-field map value (µs)\n")
    print(
        f"{'store':<14}{'set p50':>9}{'set p99':>9}{'get p50':>9}"
        f"{'flush/write':>13}{'lone durable p50':>18}   target (set p50)"
    )
    with tempfile.TemporaryDirectory() as folder:
        for name in ("MemoryStore", "SQLiteStore"):
            best: dict[str, float] | None = None
            for run in range(args.repeat):
                store: Store = (
                    MemoryStore()
                    if name == "MemoryStore"
                    else SQLiteStore(Path(folder) / f"bench-{run}.sqlite")
                )
                figures = await local_latency(store, args.writes)
                if best is None or figures["set_p50"] < best["set_p50"]:
                    best = figures
            assert best is not None
            target = 20 if name == "MemoryStore" else 200
            met = "met" if best["set_p50"] < target else "NOT met"
            print(
                f"{name:<14}{best['set_p50']:>9.1f}{best['set_p99']:>9.1f}"
                f"{best['get_p50']:>9.2f}{best['flush_per_write']:>13.1f}"
                f"{best['lone_durable_p50']:>18.0f}   < {target} µs  {met}"
            )
    print(f"\n2. catch-up after being offline: {args.keys:,} changed keys, Merkle sync\n")
    runs = [await catch_up(args.keys) for _ in range(args.repeat)]
    seconds, received, sent = min(runs)
    print(f"{'seconds':>10}{'bytes received':>16}{'bytes sent':>12}{'bytes/key':>11}")
    print(f"{seconds:>10.2f}{received:>16,}{sent:>12,}{received / args.keys:>11.1f}")
    print(f"\n(median of runs: {statistics.median(r[0] for r in runs):.2f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    anyio.run(main, parser.parse_args())
