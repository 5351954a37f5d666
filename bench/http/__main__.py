"""HTTP transports: how long a change takes to reach an SSE client and an HTTP poller.

    python3 dev.py run python bench/http [--writes N] [--rate R] [--poll-interval S]
        [--sequence-records M]

A WebSocket client writes N keys at R writes/s; an SSE client (`HttpConnector(events="sse")`)
and an HTTP poller (`events="poll"`, one `POST /sync` every S seconds) follow the map. For
each write, the time from `map.set()` on the writer to the change being visible in each
follower's map (`on_change`) is recorded; p50/p99 are printed side by side, with a second
WebSocket client as the reference. The server runs in this process (memory storage) on
Hypercorn, like `topgun serve`; every client shares the machine with it.

Then the one-off cost of HTTP sync on a map no poller has read yet: the server sequences its M
records (default 1,000,000) on the first delta asked of it. Printed: how long that takes, and
the longest the event loop went without running another task meanwhile (it sequences a
chunk of records at a time). In-process, memory storage, `topgun serve`'s GC settings.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import time

import anyio

from topgun.client import Backoff, TopGunClient
from topgun.client.http import HttpConnector
from topgun.crdt import HLC, LWWRecord, Timestamp
from topgun.server.ingest import IngestLog
from topgun.server.maps import MapRegistry
from topgun.storage import MemoryBackend, PutRecord
from topgun.testing import local_server

FAST = Backoff(initial=0.05, max_delay=1.0)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(writes: int, rate: float, poll_interval: float) -> None:
    async with local_server() as server:
        http_base = server.url.replace("ws://", "http://")
        followers = {
            "WebSocket": TopGunClient(server.url, token=server.token(), backoff=FAST),
            "SSE": TopGunClient(
                connector=HttpConnector(http_base, events="sse"), token=server.token(), backoff=FAST
            ),
            f"HTTP poll ({poll_interval:g} s)": TopGunClient(
                connector=HttpConnector(http_base, events="poll", poll_interval=poll_interval),
                token=server.token(),
                backoff=FAST,
            ),
        }
        sent: dict[str, float] = {}
        seen: dict[str, list[float]] = {name: [] for name in followers}
        async with contextlib.AsyncExitStack() as stack:
            writer = await stack.enter_async_context(
                TopGunClient(server.url, token=server.token(), backoff=FAST)
            )
            for name, client in followers.items():
                await stack.enter_async_context(client)

                def arrived(key: str, value: object, name: str = name) -> None:
                    if key in sent:
                        seen[name].append(time.perf_counter() - sent[key])

                client.map("bench").on_change(arrived)
                await client.settled()
            await writer.settled()
            m = writer.map("bench")
            for i in range(writes):
                key = f"k{i}"
                sent[key] = time.perf_counter()
                m.set(key, {"i": i})
                await anyio.sleep(1 / rate)
            with anyio.move_on_after(poll_interval * 3 + 10):
                while any(len(s) < writes for s in seen.values()):
                    await anyio.sleep(0.05)
    print(
        f"{writes} writes at {rate:g}/s from a WebSocket client; server in-process; "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"{'follower':<22}{'received':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, samples in seen.items():
        if samples:
            p50, p99 = pct(samples, 0.5) * 1000, pct(samples, 0.99) * 1000
            print(f"{name:<22}{len(samples):>10}{p50:>10.1f}{p99:>10.1f}")
        else:
            print(f"{name:<22}{0:>10}{'-':>10}{'-':>10}")


async def sequencing(records: int) -> None:
    """Time the first `IngestLog.sequence` of a map of `records` records, and the longest
    gap between two runs of a task that only yields meanwhile."""
    backend = MemoryBackend()
    await backend.initialize()
    now = int(time.time() * 1000)
    for start in range(0, records, 100_000):
        await backend.store_batch(
            [
                PutRecord(
                    "m", f"key-{i}", LWWRecord({"n": i}, Timestamp(now - records + i, 0, "w"))
                )
                for i in range(start, min(records, start + 100_000))
            ]
        )
    hlc = HLC("bench", lambda: int(time.time() * 1000))
    maps = MapRegistry(hlc)
    await maps.load(backend)
    ingest = IngestLog(maps, hlc)
    await ingest.load(backend)
    gc.set_threshold(20_000, 50, 100)  # as `topgun serve` runs
    gc.freeze()
    longest = 0.0
    done = False

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:
            await anyio.lowlevel.checkpoint()
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()
        started = time.perf_counter()
        log = await ingest.sequence("m")
        took = time.perf_counter() - started
        done = True
    assert log.seq == records
    print(
        f"first delta of a map of {records:,} records not yet sequenced: sequencing took "
        f"{took:.2f} s; the event loop waited at most {longest * 1000:.0f} ms meanwhile"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--sequence-records", type=int, default=1_000_000)
    args = parser.parse_args()
    anyio.run(main, args.writes, args.rate, args.poll_interval)
    anyio.run(sequencing, args.sequence_records)
