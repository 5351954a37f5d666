"""Queries and search: index plans vs full scans, live-query cost per write, BM25 throughput.

    python3 dev.py run python bench/query.py [--rows N] [--million M] [--queries Q] [--docs D]
                                             [--repeat R]

1. Index plan vs full scan over N rows (default 100,000): an equality, a range with a sort
   and limit, an AND of three conditions, a `contains` and a limited sort on its own — each
   run over plain rows (full scan) and over an `IndexedMap` with hash, sorted, inverted and
   compound indexes; the two results are checked equal.
2. Live queries: Q standing queries (default 1,000) on one map, each filtering on its own
   owner (`where {owner: ...}`), plus sorted top-10 windows; the cost of one write's window
   transitions through `LiveQueries.apply`, and how many queries were looked at.
3. The issue's targets on M records (default 1,000,000): indexed equality p50, a range query
   returning 100 rows p50; and the server's cost per write with Q standing queries
   (`topgun.server.live.LiveQueryService`, the path every applied change takes).
4. BM25: indexing D documents (default 20,000, two text fields), and searches per second.

Data comes from a fixed seed; each figure is the best of R runs.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from topgun.crdt import HLC, LWWRecord, Timestamp
from topgun.protocol import Codec, EventPayload
from topgun.query import IndexedMap, IndexSpec, LiveQueries, parse_query, plan, run_query
from topgun.search import BM25Index
from topgun.server.live import LiveQueryService
from topgun.server.maps import MapRegistry
from topgun.server.permissions import ALL_FIELDS

NOW = 1_700_000_000_000
_VOCABULARY = (
    "merkle tree sync replica conflict clock vector causal order event stream query index "
    "search score window cursor partition member leader follower commit batch snapshot delta "
    "journal topic lock counter token session client server storage codec plugin hook"
)
WORDS = _VOCABULARY.split()


def best(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """The fastest of `repeat` runs of `fn` in seconds, and its last result."""
    times = []
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def make_rows(n: int, rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            f"row-{i:07}",
            {
                "status": rng.choice(["open", "done", "blocked", "review"]),
                "owner": f"user-{rng.randrange(1000)}",
                "score": rng.randrange(1_000_000),
                "title": " ".join(rng.choices(WORDS, k=5)),
            },
        )
        for i in range(n)
    ]


def bench_plans(n: int, repeat: int) -> None:
    rng = random.Random(7)
    rows = make_rows(n, rng)
    table = IndexedMap(
        [
            IndexSpec("hash", ("status",)),
            IndexSpec("hash", ("owner",)),
            IndexSpec("sorted", ("score",)),
            IndexSpec("inverted", ("title",)),
            IndexSpec("compound", ("status", "owner")),
        ]
    )
    start = time.perf_counter()
    for key, value in rows:
        table.set(key, value)
    print(f"  indexing {n:,} rows (5 indexes): {time.perf_counter() - start:.2f} s")
    cases = {
        "eq owner (≈0.1% of rows)": {"where": {"owner": "user-42"}},
        "range + sort + limit 20": {
            "where": {"score": {"$gte": 990_000}},
            "sort": {"score": "desc"},
            "limit": 20,
        },
        "and of 3 (compound + range)": {
            "predicate": {
                "op": "and",
                "children": [
                    {"op": "eq", "attribute": "status", "value": "open"},
                    {"op": "eq", "attribute": "owner", "value": "user-7"},
                    {"op": "gt", "attribute": "score", "value": 500_000},
                ],
            }
        },
        "contains 'merkle tree'": {
            "predicate": {"op": "contains", "attribute": "title", "value": "merkle tree"},
            "limit": 50,
        },
        "sort score desc, limit 50": {"sort": {"score": "desc"}, "limit": 50},
    }
    print(f"  {'query':32} {'full scan':>12} {'index plan':>12} {'speed-up':>9}  plan")
    for name, wire in cases.items():
        query = parse_query(wire)
        scan_s, scanned = best(repeat, lambda q=query: run_query(q, rows, now_ms=NOW))
        plan_s, planned = best(repeat, lambda q=query: run_query(q, table, now_ms=NOW))
        assert planned == scanned, name
        print(
            f"  {name:32} {scan_s * 1e3:9.2f} ms {plan_s * 1e3:9.3f} ms {scan_s / plan_s:8.0f}x"
            f"  {plan(query, table).describe()}"
        )


def bench_live(queries: int, repeat: int) -> None:
    rng = random.Random(11)
    rows = make_rows(20_000, rng)
    table = IndexedMap([IndexSpec("sorted", ("score",))])
    for key, value in rows:
        table.set(key, value)
    live: LiveQueries[int] = LiveQueries()
    for i in range(queries):
        live.subscribe(
            i, "tasks", parse_query({"where": {"owner": f"user-{i}"}}), table, now_ms=NOW
        )
    tops = 10
    for j in range(tops):
        query = parse_query({"where": {"status": "open"}, "sort": {"score": "desc"}, "limit": 10})
        live.subscribe(queries + j, "tasks", query, table, now_ms=NOW)
    writes = [
        (
            f"row-{rng.randrange(len(rows)):07}",
            {
                **rows[0][1],
                "owner": f"user-{rng.randrange(queries)}",
                "status": rng.choice(["open", "done"]),
                "score": rng.randrange(1_000_000),
            },
        )
        for _ in range(5_000)
    ]

    def run() -> tuple[int, int]:
        looked_at = changed = 0
        for key, value in writes:
            looked_at += len(live.candidates("tasks", key, value))
            table.set(key, value)
            changed += sum(1 for _ in live.apply("tasks", key, table))
        return looked_at, changed

    seconds, (looked_at, changed) = best(repeat, run)
    total = queries + tops
    print(
        f"  {total:,} standing queries, {len(writes):,} writes: "
        f"{seconds / len(writes) * 1e6:.1f} µs per write "
        f"({len(writes) / seconds:,.0f} writes/s); "
        f"{looked_at / len(writes):.1f} queries looked at per write, "
        f"{changed / len(writes):.2f} windows changed per write"
    )


def bench_search(docs: int, repeat: int) -> None:
    rng = random.Random(3)
    values = [
        (
            f"doc-{i:06}",
            {
                "title": " ".join(rng.choices(WORDS, k=6)),
                "body": " ".join(rng.choices(WORDS, k=40)),
            },
        )
        for i in range(docs)
    ]

    def build() -> BM25Index:
        index = BM25Index(["title", "body"])
        for key, value in values:
            index.set(key, value)
        return index

    seconds, index = best(repeat, build)
    print(f"  indexing {docs:,} documents (46 words each): {docs / seconds:,.0f} docs/s")
    searches = ["merkle", "vector clock", "query index cursor", "commit snapshot journal topic"]
    for text in searches:
        s, result = best(repeat, lambda t=text: index.search(t, limit=10))
        print(f"  search {text!r:34} limit 10: {s * 1e3:7.2f} ms ({result.total_count:,} matches)")
    s, _ = best(repeat, lambda: index.search("merkle", limit=10, boost={"title": 2.0}))
    print(f"  search 'merkle' with boost title x2:       {s * 1e3:7.2f} ms")


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def bench_million(n: int) -> None:
    """Issue targets on N records (default 1,000,000): an indexed equality query (p50 < 1 ms)
    and a range query returning 100 rows (p50 < 5 ms), each over 200 different values."""
    rng = random.Random(5)
    table = IndexedMap([IndexSpec("hash", ("owner",)), IndexSpec("sorted", ("score",))])
    start = time.perf_counter()
    table.load(
        (f"r{i:07}", {"owner": f"u{rng.randrange(n // 10)}", "score": rng.random()})
        for i in range(n)
    )
    print(
        f"  loading {n:,} records (hash owner, sorted score; IndexedMap.load): "
        f"{time.perf_counter() - start:.1f} s"
    )
    eq_times, eq_rows = [], 0
    for i in range(200):
        query = parse_query({"where": {"owner": f"u{i * 37}"}})
        t0 = time.perf_counter()
        result = run_query(query, table, now_ms=NOW)
        eq_times.append(time.perf_counter() - t0)
        eq_rows += len(result.rows)
    print(
        f"  indexed equality (≈10 rows each): p50 {p50(eq_times) * 1e3:.3f} ms, "
        f"max {max(eq_times) * 1e3:.3f} ms ({eq_rows / 200:.1f} rows avg) — target p50 < 1 ms"
    )
    width = 100 / n  # scores are uniform in [0, 1): this width holds ≈100 rows
    range_times, range_rows = [], 0
    for i in range(200):
        low = i / 200 * (1 - width)
        query = parse_query(
            {
                "predicate": {
                    "op": "and",
                    "children": [
                        {"op": "gte", "attribute": "score", "value": low},
                        {"op": "lt", "attribute": "score", "value": low + width},
                    ],
                },
                "sort": {"score": "asc"},
            }
        )
        t0 = time.perf_counter()
        result = run_query(query, table, now_ms=NOW)
        range_times.append(time.perf_counter() - t0)
        range_rows += len(result.rows)
    print(
        f"  range query (≈100 rows each, sorted): p50 {p50(range_times) * 1e3:.3f} ms, "
        f"max {max(range_times) * 1e3:.3f} ms ({range_rows / 200:.1f} rows avg) "
        "— target p50 < 5 ms"
    )
    writes = [
        (f"r{rng.randrange(n):07}", {"owner": "u1", "score": rng.random()}) for _ in range(2000)
    ]
    t0 = time.perf_counter()
    for key, value in writes:
        table.set(key, value)
    per_write = (time.perf_counter() - t0) / len(writes)
    print(f"  one write kept in both indexes: {per_write * 1e6:.1f} µs")


def bench_server_writes(queries: int, repeat: int) -> None:
    """The server's cost per write with `queries` standing queries on the map: the change
    through `LiveQueryService.changed` (view update, standing-query lookup, window
    transitions, QUERY_UPDATE encoding, event routing) — target < 50 µs."""
    maps = MapRegistry(HLC("bench", lambda: NOW))
    codec = Codec()
    live = LiveQueryService(maps, encode=codec.encode)
    rng = random.Random(13)

    def put(key: str, value: Any, millis: int) -> list[EventPayload]:
        with maps.recording() as recording:
            maps.merge_lww("tasks", key, LWWRecord(value, Timestamp(millis, 0, "w")))
        return recording.events

    for i in range(20_000):
        put(f"row-{i:05}", {"owner": f"user-{i % queries}", "score": rng.randrange(1000)}, 1)
    sessions = [_Session() for _ in range(queries // 10)]
    for i in range(queries):
        query = parse_query({"where": {"owner": f"user-{i}"}, "sort": {"score": "desc"}})
        live.subscribe(sessions[i % len(sessions)], f"q{i}", "tasks", query, ALL_FIELDS, now_ms=NOW)
    writes = [
        (f"row-{rng.randrange(20_000):05}", f"user-{rng.randrange(queries)}") for _ in range(5_000)
    ]
    millis = 2

    def run() -> int:
        nonlocal millis
        routed = 0
        for key, owner in writes:
            millis += 1
            events = put(key, {"owner": owner, "score": rng.randrange(1000)}, millis)
            interest = live.changed(events)
            live.flush()
            routed += sum(len(s) for s in interest.values())
        return routed

    seconds, routed = best(repeat, run)
    sent = sum(s.sent for s in sessions)
    print(
        f"  {queries:,} standing queries ({len(sessions)} sessions), {len(writes):,} writes: "
        f"{seconds / len(writes) * 1e6:.1f} µs per write incl. the map merge "
        f"({routed / len(writes):.2f} sessions routed, "
        f"{sent / repeat / len(writes):.2f} QUERY_UPDATEs per write) — target < 50 µs"
    )


class _Session:
    """A recipient that counts what it is sent."""

    principal = None
    is_open = True

    def __init__(self) -> None:
        self.sent = 0

    def send_frame(self, frame: bytes, message_type: str) -> None:
        self.sent += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--million", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}")
    print(f"index plan vs full scan, {args.rows:,} rows")
    bench_plans(args.rows, args.repeat)
    print(f"issue targets on {args.million:,} records")
    bench_million(args.million)
    print("live queries")
    bench_live(args.queries, args.repeat)
    print("live queries in the server (LiveQueryService)")
    bench_server_writes(args.queries, args.repeat)
    print("BM25 full-text search")
    bench_search(args.docs, args.repeat)


if __name__ == "__main__":
    main()
