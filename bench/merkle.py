"""Merkle trie: build for 100,000 keys, and find 1% changed keys root-to-leaf.

    python3 dev.py run python bench/merkle.py [--keys N] [--changed-percent P] [--repeat R]

Data is deterministic (seeded). Each figure is the best of R runs; building the input
records is not timed. Targets: build < 1 s, diff < 50 ms (100,000 keys, 1% changed).
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from collections.abc import Callable
from typing import TypeVar

from topgun.crdt import HLC, LWWMap, LWWRecord, MerkleTree, ORMap, ORMapRecord, Timestamp

T0 = 1_700_000_000_000
BUILD_TARGET_S = 1.0
DIFF_TARGET_S = 0.050
S = TypeVar("S")


def best_of(repeat: int, setup: Callable[[], S], run: Callable[[S], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        state = setup()
        start = time.perf_counter()
        run(state)
        best = min(best, time.perf_counter() - start)
    return best


def lww_map(records: list[tuple[str, LWWRecord]]) -> LWWMap:
    m = LWWMap(HLC("bench", lambda: T0 + 10**7))
    m.merge_many(records)
    return m


def walk_with_buckets(mine: MerkleTree, theirs: MerkleTree) -> tuple[list[str], int]:
    """The client's side of PROTOCOL.md §6.3: request the buckets of every differing node.

    Returns the differing leaves and how many bucket requests the walk took.
    """
    if mine.root_hash == theirs.root_hash:
        return [], 0
    leaves: list[str] = []
    requests = 0
    frontier = [""]
    while frontier:
        path = frontier.pop()
        requests += 1
        remote = theirs.buckets(path)
        local = mine.buckets(path)
        for digit, remote_hash in remote.items():
            if local.get(digit, 0) != remote_hash:
                child = path + digit
                (leaves if len(child) == 3 else frontier).append(child)
    return sorted(leaves), requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--changed-percent", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, repeat = args.keys, args.repeat

    rng = random.Random(7)
    records = [
        (f"user:{i}", LWWRecord({"i": i}, Timestamp(T0 + rng.randrange(10**6), 0, "node-a")))
        for i in range(n)
    ]
    changed_keys = rng.sample([k for k, _ in records], int(n * args.changed_percent / 100))
    changes = [(k, LWWRecord("new", Timestamp(T0 + 2 * 10**6, 0, "node-b"))) for k in changed_keys]

    # Build: hash every key of a freshly merged map into an empty trie (first root read).
    build = best_of(repeat, lambda: lww_map(records), lambda m: m.merkle.refresh())
    merge_and_build = best_of(repeat, lambda: records, lambda rs: lww_map(rs).merkle.refresh())

    # Two replicas that differ in the changed keys; both tries are up to date before timing.
    def replicas() -> tuple[LWWMap, LWWMap]:
        a, b = lww_map(records), lww_map(records)
        b.merge_many(changes)
        a.merkle.refresh()
        b.merkle.refresh()
        return a, b

    def stale_replica() -> LWWMap:
        b = lww_map(records)
        b.merkle.refresh()
        b.merge_many(changes)
        return b

    update = best_of(repeat, stale_replica, lambda b: b.merkle.refresh())
    diff = best_of(repeat, replicas, lambda ab: ab[0].merkle.diff(ab[1].merkle))
    walk = best_of(repeat, replicas, lambda ab: walk_with_buckets(ab[0].merkle, ab[1].merkle))

    a, b = replicas()
    leaves = a.merkle.diff(b.merkle)
    walked, requests = walk_with_buckets(a.merkle, b.merkle)
    assert walked == leaves
    found = {k for leaf in leaves for k in b.merkle.keys_at(leaf)}
    assert set(changed_keys) <= found, "the diff missed a changed key"

    or_records = [
        (f"tags:{i}", ORMapRecord(f"tag-{i % 50}", ts, str(ts)))
        for i, ts in ((i, Timestamp(T0 + i, 0, "node-a")) for i in range(n))
    ]

    def or_map() -> ORMap:
        m = ORMap(HLC("bench", lambda: T0 + 10**7))
        for key, record in or_records:
            m.apply(key, record)
        return m

    or_build = best_of(repeat, or_map, lambda m: m.merkle.refresh())

    def verdict(seconds: float, target: float) -> str:
        return f"< {target * 1000:,.0f} ms  {'met' if seconds < target else 'MISSED'}"

    print(f"Merkle trie: {n:,} keys, {len(changed_keys):,} changed, best of {repeat}")
    print(f"Python {platform.python_version()} on {platform.machine()}, seed 7\n")
    print(f"{'measurement':<52} {'time':>10}   target")
    rows = [
        ("LWW trie build (hash all keys, empty trie)", build, verdict(build, BUILD_TARGET_S)),
        ("LWW merge_many + trie build", merge_and_build, ""),
        ("incremental update after the changes (re-hash)", update, ""),
        (f"diff() root-to-leaf -> {len(leaves):,} leaves", diff, verdict(diff, DIFF_TARGET_S)),
        (f"walk via buckets(): {requests:,} bucket requests", walk, verdict(walk, DIFF_TARGET_S)),
        ("OR-Map trie build (1 record per key)", or_build, verdict(or_build, BUILD_TARGET_S)),
    ]
    for name, seconds, target in rows:
        print(f"{name:<52} {seconds * 1000:>7.1f} ms   {target}")


if __name__ == "__main__":
    main()
