"""The write path in process: CPU time and instructions per op of `apply` + `settle`.

    python3 dev.py run python bench/write_path.py [--ops N] [--rounds R]
        [--storage memory|sqlite] [--callgrind]

A started `Server` (no ASGI server, no connections) takes `OP_BATCH`-sized requests of 10
fresh LWW puts over 50,000 keys from an ADMIN through `WritePipeline.apply` and `settle`,
as `op_batch` does: validation, permissions, merge, events, journal, storage hand-off. The
WebSocket, session and codec work `bench/load.py` also counts is left out, so this is the
part of its `µs/op` column that the write path costs.

- CPU µs per op (the whole process, the storage writer included), each of R rounds of N ops
  and the best: comparable within one run, but on a shared machine it varies by ±20%.
- With `--callgrind` (valgrind installed), the same runs under callgrind twice, with N and
  2.5 N ops, and the difference gives instructions per op: start-up is subtracted, and the
  count repeats to within about 1% whatever else the machine is doing, so it shows changes of
  a few percent that timings cannot.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from topgun.crdt import LWWRecord, Timestamp
from topgun.hooks import make_plugin_manager
from topgun.protocol import ClientOp
from topgun.server import AuthConfig, Secret, Server, ServerConfig, StorageConfig
from topgun.server.auth import TokenPrincipal
from topgun.server.writes import WriteContext

BATCH = 10
KEYS = 50_000


def requests(count: int, start: int) -> list[list[ClientOp]]:
    """`count` ops as requests of `BATCH` puts, timestamps increasing from `start`."""
    stamp = int(time.time() * 1000)
    batches: list[list[ClientOp]] = []
    for first in range(start, start + count, BATCH):
        batches.append(
            [
                ClientOp(
                    map_name="load",
                    key=f"k{n % KEYS}",
                    record=LWWRecord({"v": n, "t": "x" * 40}, Timestamp(stamp, n, "c")),
                )
                for n in range(first, min(first + BATCH, start + count))
            ]
        )
    return batches


async def measure(ops: int, rounds: int, storage: str) -> list[float]:
    """CPU µs per op of each round."""
    with tempfile.TemporaryDirectory() as data_dir:
        config = ServerConfig(
            data_dir=Path(data_dir),
            node_id="bench",
            storage=StorageConfig(backend=storage),
            auth=AuthConfig(jwt_secret=Secret("bench-secret-" + "x" * 32)),
        )
        pm = make_plugin_manager(entry_points=(), environ={})
        async with Server(config, pm=pm) as server:
            writes = server.writes
            context = WriteContext(
                TokenPrincipal.from_claims({"sub": "bench", "roles": ["ADMIN"]}), None
            )
            figures: list[float] = []
            for index in range(rounds):
                batches = requests(ops, index * ops)
                began = time.process_time()
                for batch in batches:
                    request = await writes.apply(batch, context, origin=None)
                    results = await writes.settle(request, context)
                    assert all(result.success for result in results)
                figures.append((time.process_time() - began) / ops * 1e6)
    return figures


def instructions(ops: int, storage: str) -> int:
    """Instructions callgrind counts for one process measuring `ops` ops."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--ops",
            str(ops),
            "--rounds",
            "1",
            "--storage",
            storage,
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no count:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=20_000, help="ops per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--storage", default="memory", choices=["memory", "sqlite"])
    parser.add_argument(
        "--callgrind", action="store_true", help="instructions per op, under valgrind"
    )
    args = parser.parse_args()
    if args.callgrind:
        if shutil.which("valgrind") is None:
            raise SystemExit("--callgrind needs valgrind on PATH")
        small = max(BATCH, args.ops // 10 // BATCH * BATCH)  # callgrind runs ~50x slower
        large = small * 5 // 2
        print(f"callgrind: {small:,} and {large:,} ops, storage {args.storage} ...", flush=True)
        per_op = (instructions(large, args.storage) - instructions(small, args.storage)) / (
            large - small
        )
        print(f"write path (apply + settle): {per_op:,.0f} instructions per op")
        return
    figures = anyio.run(measure, args.ops, args.rounds, args.storage)
    print(
        f"write path (apply + settle), requests of {BATCH} LWW puts, storage {args.storage}, "
        f"{args.rounds} rounds of {args.ops:,} ops"
    )
    print("CPU µs per op: " + "  ".join(f"{f:.2f}" for f in figures))
    print(f"best {min(figures):.2f} µs per op ({1e6 / min(figures):,.0f} ops per CPU-second)")


if __name__ == "__main__":
    main()
