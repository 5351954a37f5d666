"""The audit log's cost on the op path: acked ops/s and ack latency with and without it.

    python3 dev.py run python bench/audit.py [--connections C] [--batch B] [--duration D]
        [--storage memory|sqlite] [--small]

`topgun serve` runs in its own process (Hypercorn, 127.0.0.1) three times on the same load
(`bench/load.py`'s closed loop: C connections each send an `OP_BATCH` of B fresh LWW writes
as soon as the previous `OP_ACK` arrived, for D seconds): without the audit plugin, with it
(`fsync = true`, the default), and with it without fsync. With the plugin, every op is one
`write` entry; after the server stopped, the log is verified and its entries counted, so the
table also shows that nothing was dropped. `--small` is a quick run (5 connections, 1 s).

Before that, in this process: what recording costs the op path per write (building the
entry and queueing it, as the recorder's `after_op` does), and how many entries per second
the writer thread chains, encodes and writes (fsync per batch, and without).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import anyio
from load import SECRET, ServerProcess, check_ack, closed_loop, open_connections, percentile
from topgun_audit import AuditLog, entries, events, verify

from topgun.crdt.records import LWWRecord, Timestamp
from topgun.protocol import ClientOp, OpResult

CASES = {
    "no audit": {"TOPGUN_LOAD_PLUGINS": ""},
    "audit, fsync": {"TOPGUN_LOAD_PLUGINS": "audit"},
    "audit, no fsync": {"TOPGUN_LOAD_PLUGINS": "audit", "TOPGUN_AUDIT_FSYNC": "false"},
}


@dataclass
class Figures:
    case: str
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    acked: int
    entries: int | None
    verify_s: float | None


async def measure(case: str, args: argparse.Namespace, data_dir: Path) -> Figures:
    command = [sys.executable, "-m", "topgun", "serve", "--port", "0", "--storage", args.storage]
    command += ["--data-dir", str(data_dir)]
    env = {"TOPGUN_AUTH_JWT_SECRET": SECRET, **CASES[case]}
    server = ServerProcess(command, env, "topgun ")
    acked = 0
    try:
        connections = await open_connections(server.port, args.connections, authenticate=True)
        warm, _ = await closed_loop(connections, args.batch, min(1.0, args.duration), check_ack)
        tally, elapsed = await closed_loop(connections, args.batch, args.duration, check_ack)
        acked = warm.ops + tally.ops + warm.failed + tally.failed
        for ws in connections:
            await ws.close()
        if tally.failed or warm.failed:
            print(f"  {case}: {tally.failed + warm.failed} ops failed", file=sys.stderr)
    finally:
        server.stop()
    count = seconds = None
    if CASES[case]["TOPGUN_LOAD_PLUGINS"]:
        started = time.perf_counter()
        result = verify(data_dir / "audit")
        seconds = time.perf_counter() - started
        if not result.ok:
            raise SystemExit(f"{case}: the audit log does not verify: {result.problem}")
        count = sum(1 for e in entries(data_dir / "audit") if e["event"] == "write")
        if count != acked:
            raise SystemExit(f"{case}: {acked} writes acknowledged but {count} recorded")
    return Figures(
        case,
        tally.ops / elapsed,
        percentile(tally.latencies, 0.5) * 1000,
        percentile(tally.latencies, 0.99) * 1000,
        acked,
        count,
        seconds,
    )


def in_process(count: int) -> None:
    """The op-path cost of one entry and the writer's throughput, without a server."""
    op = ClientOp(
        map_name="load",
        key="load-1-123",
        id="123",
        record=LWWRecord({"title": "load test", "n": 1}, Timestamp(1_700_000_000_000, 5, "load-1")),
    )
    principal = SimpleNamespace(user_id="load", roles=("ADMIN",), claims={})
    connection = SimpleNamespace(client_id="c-1", remote_address="127.0.0.1:1", principal=principal)
    context = SimpleNamespace(principal=principal, connection=connection)
    result = OpResult(op_id="123", success=True, achieved_level="MEMORY")
    for fsync in (True, False):
        with tempfile.TemporaryDirectory(prefix="topgun-audit-bench-") as folder:
            log = AuditLog(Path(folder), queue_size=count, fsync=fsync)
            log.open()
            started = time.perf_counter()
            for _ in range(count):
                log.try_put(events.write(op, context, result))  # type: ignore[arg-type]
            queued = time.perf_counter() - started
            assert log.flush(600)
            total = time.perf_counter() - started
            log.close()
            assert verify(Path(folder)).entries == count
        if fsync:
            print(f"op path: build + queue one write entry  {queued / count * 1e6:6.1f} µs")
        label = "fsync per batch" if fsync else "no fsync"
        print(f"writer, {label:<16} {count / total:>10,.0f} entries/s ({count:,} entries)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per case")
    parser.add_argument("--storage", default="memory", choices=["memory", "sqlite"])
    parser.add_argument("--small", action="store_true", help="5 connections, 1 s per case")
    args = parser.parse_args()
    if args.small:
        args.connections, args.duration = 5, 1.0
    in_process(20_000 if args.small else 200_000)

    async def run_all() -> list[Figures]:
        with tempfile.TemporaryDirectory(prefix="topgun-audit-bench-") as folder:
            return [
                await measure(case, args, Path(folder) / str(i)) for i, case in enumerate(CASES)
            ]

    results = anyio.run(run_all)
    print(
        f"{args.connections} connections, OP_BATCH of {args.batch} LWW writes, "
        f"{args.duration:g} s per case, storage {args.storage}; "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"{'case':<16} {'acked ops/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'vs none':>8} "
        f"{'writes acked':>13} {'recorded':>9} {'verify s':>9}"
    )
    base = results[0].ops_per_s
    for f in results:
        recorded = "-" if f.entries is None else f"{f.entries:,}"
        verified = "-" if f.verify_s is None else f"{f.verify_s:.2f}"
        print(
            f"{f.case:<16} {f.ops_per_s:>12,.0f} {f.p50_ms:>7.2f} {f.p99_ms:>7.2f} "
            f"{f.ops_per_s / base:>8.0%} {f.acked:>13,} {recorded:>9} {verified:>9}"
        )


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
