"""The write path in process: CPU time and instructions per op of `apply` + `settle`.

    python3 dev.py run python bench/write_path.py [--ops N] [--rounds R]
        [--storage memory|sqlite] [--session] [--callgrind]

A started `Server` (no ASGI server, no connections) takes `OP_BATCH`-sized requests of 10
fresh LWW puts over 50,000 keys from an ADMIN through `WritePipeline.apply` and `settle`,
as `op_batch` does: validation, permissions, merge, events, journal, storage hand-off. The
WebSocket, session and codec work `bench/load.py` also counts is left out, so this is the
part of its `µs/op` column that the write path costs. With `--session`, the same requests
arrive instead as encoded `OP_BATCH` frames on an authenticated in-memory connection, one
at a time, each `OP_ACK` awaited: the session, codec and acknowledgement are counted too,
everything `bench/load.py` measures but the ASGI server and the WebSocket protocol.

- CPU µs per op (the whole process, the storage writer included: a round ends once its last
  request is committed), each of R rounds of N ops and the best: comparable within one
  run, but on a shared machine it varies by ±20%.
- With `--callgrind` (valgrind installed), the same runs under callgrind twice, with N and
  2.5 N ops, and the difference gives instructions per op: start-up is subtracted, and the
  count repeats to within about 1% whatever else the machine is doing, so it shows changes of
  a few percent that timings cannot.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import jwt

from topgun.crdt import LWWRecord, Timestamp
from topgun.hooks import make_plugin_manager
from topgun.protocol import (
    Auth,
    AuthAck,
    AuthRequired,
    ClientOp,
    OpBatch,
    OpBatchPayload,
    decode_server_frame,
    encode,
)
from topgun.server import AuthConfig, InMemoryClient, Secret, Server, ServerConfig, StorageConfig
from topgun.server.auth import TokenPrincipal
from topgun.server.writes import WriteContext

BATCH = 10
KEYS = 50_000
SECRET = "bench-secret-" + "x" * 32
CLAIMS = {"sub": "bench", "roles": ["ADMIN"]}
WAIT_S = 600.0
"""How long to wait for a reply: under callgrind everything runs ~50 times slower."""


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


@contextlib.asynccontextmanager
async def started(storage: str) -> AsyncIterator[Server]:
    with tempfile.TemporaryDirectory() as data_dir:
        config = ServerConfig(
            data_dir=Path(data_dir),
            node_id="bench",
            storage=StorageConfig(backend=storage),
            auth=AuthConfig(jwt_secret=Secret(SECRET)),
        )
        pm = make_plugin_manager(entry_points=(), environ={})
        async with Server(config, pm=pm) as server:
            yield server


async def measure(ops: int, rounds: int, storage: str) -> list[float]:
    """CPU µs per op of each round, through the write pipeline."""
    async with started(storage) as server:
        writes = server.writes
        context = WriteContext(TokenPrincipal.from_claims(CLAIMS), None)
        figures: list[float] = []
        for index in range(rounds):
            batches = requests(ops, index * ops)
            began = time.process_time()
            for batch in batches:
                request = await writes.apply(batch, context, origin=None)
                results = await writes.settle(request, context)
                assert all(result.success for result in results)
            if request.commit is not None:
                await request.commit.wait()  # the writer commits in order: all of it is done
            figures.append((time.process_time() - began) / ops * 1e6)
    return figures


async def measure_session(ops: int, rounds: int, storage: str) -> list[float]:
    """CPU µs per op of each round, as frames on an in-memory connection."""
    async with (
        started(storage) as server,
        anyio.create_task_group() as tg,
        InMemoryClient.connect(server, tg) as client,
    ):
        assert isinstance(await client.receive(WAIT_S), AuthRequired)
        await client.send(Auth(token=jwt.encode(CLAIMS, SECRET, algorithm="HS256")))
        assert isinstance(await client.receive(WAIT_S), AuthAck)
        figures: list[float] = []
        for index in range(rounds):
            frames = [
                encode(OpBatch(payload=OpBatchPayload(ops=batch)))
                for batch in requests(ops, index * ops)
            ]
            client.raw_frames.clear()
            began = time.process_time()
            for frame in frames:
                await client.send_raw(frame)
                ack = await client.receive_frame(WAIT_S)
                if b"OP_ACK" not in ack or b"OP_REJECTED" in ack:
                    raise SystemExit(f"not a plain OP_ACK: {decode_server_frame(ack)}")
            figures.append((time.process_time() - began) / ops * 1e6)
    return figures


def instructions(ops: int, storage: str, session: bool) -> int:
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
            *(["--session"] if session else []),
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
    parser.add_argument("--session", action="store_true", help="frames on an in-memory connection")
    parser.add_argument(
        "--callgrind", action="store_true", help="instructions per op, under valgrind"
    )
    args = parser.parse_args()
    what = "session (frames to acks)" if args.session else "write path (apply + settle)"
    run_args = (args.ops, args.rounds, args.storage)
    if args.callgrind:
        if shutil.which("valgrind") is None:
            raise SystemExit("--callgrind needs valgrind on PATH")
        small = max(BATCH, args.ops // 10 // BATCH * BATCH)  # callgrind runs ~50x slower
        large = small * 5 // 2
        print(f"callgrind: {small:,} and {large:,} ops, storage {args.storage} ...", flush=True)
        counts = [instructions(ops, args.storage, args.session) for ops in (small, large)]
        per_op = (counts[1] - counts[0]) / (large - small)
        print(f"{what}: {per_op:,.0f} instructions per op")
        return
    figures = anyio.run(measure_session if args.session else measure, *run_args)
    print(
        f"{what}, requests of {BATCH} LWW puts, storage {args.storage}, "
        f"{args.rounds} rounds of {args.ops:,} ops"
    )
    print("CPU µs per op: " + "  ".join(f"{f:.2f}" for f in figures))
    print(f"best {min(figures):.2f} µs per op ({1e6 / min(figures):,.0f} ops per CPU-second)")


if __name__ == "__main__":
    main()
