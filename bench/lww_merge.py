"""LWW merge throughput: remote records merged into an LWWMap.

    python3 dev.py run python bench/lww_merge.py [--records N] [--repeat R]

Data is deterministic (seeded). Each figure is the best of R runs; building the input
and the map's prior state is not timed. Target: merge_many >= 1,000,000 records/s.
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from collections.abc import Callable

from topgun.crdt import HLC, LWWMap, LWWRecord, Timestamp

T0 = 1_700_000_000_000
TARGET_RATE = 1_000_000


def make_records(n: int, seed: int, base_millis: int) -> list[tuple[str, LWWRecord]]:
    """`n` remote records for keys key-0..key-(n-1), from 8 writer nodes, 1% tombstones."""
    rng = random.Random(seed)
    nodes = [f"node-{i}" for i in range(8)]
    out = []
    for i in range(n):
        ts = Timestamp(base_millis + rng.randrange(60_000), rng.randrange(4), rng.choice(nodes))
        value = None if rng.random() < 0.01 else f"value-{i}-{rng.randrange(10**6)}"
        out.append((f"key-{i}", LWWRecord(value, ts)))
    return out


def new_map() -> LWWMap:
    # The receiver's wall clock is ahead of every record: no drift warnings.
    return LWWMap(HLC("receiver", lambda: T0 + 10**7))


def best_of(repeat: int, setup: Callable[[], LWWMap], run: Callable[[LWWMap], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        target = setup()
        start = time.perf_counter()
        run(target)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, repeat = args.records, args.repeat

    first = make_records(n, seed=1, base_millis=T0)
    newer = make_records(n, seed=2, base_millis=T0 + 120_000)  # every record newer than `first`

    def filled() -> LWWMap:
        m = new_map()
        m.merge_many(first)
        return m

    def merge_one_by_one(m: LWWMap) -> None:
        merge = m.merge
        for key, record in first:
            merge(key, record)

    rows: list[tuple[str, float, bool]] = [
        (
            "merge_many into an empty map",
            best_of(repeat, new_map, lambda m: m.merge_many(first)),
            True,
        ),
        (
            "merge_many, every record newer",
            best_of(repeat, filled, lambda m: m.merge_many(newer)),
            True,
        ),
        (
            "merge_many replay (none applied)",
            best_of(repeat, filled, lambda m: m.merge_many(first)),
            True,
        ),
        ("merge() one record at a time", best_of(repeat, new_map, merge_one_by_one), False),
    ]

    def merged() -> LWWMap:
        m = new_map()
        m.merge_many(first)
        return m

    root_time = best_of(repeat, merged, lambda m: m.merkle.refresh())

    print(f"LWW merge: {n:,} remote records, best of {repeat}")
    print(f"Python {platform.python_version()} on {platform.machine()}, seeds 1 and 2\n")
    print(f"{'scenario':<36} {'time':>9} {'records/s':>13}   target")
    for name, seconds, targeted in rows:
        rate = n / seconds
        verdict = ""
        if targeted:
            verdict = f">= {TARGET_RATE:,}/s  {'met' if rate >= TARGET_RATE else 'MISSED'}"
        print(f"{name:<36} {seconds:>7.3f} s {rate:>13,.0f}   {verdict}")
    print(
        f"{'then Merkle re-hash of those keys':<36} {root_time:>7.3f} s {n / root_time:>13,.0f}"
        "   (deferred from the merge to the next trie read)"
    )


if __name__ == "__main__":
    main()
