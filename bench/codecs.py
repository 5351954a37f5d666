"""Value codecs: write throughput and stored bytes with no codec, compress, encrypt, both.

    python3 dev.py run python bench/codecs.py [--values N] [--writers W] [--repeat R] [--dir D]

The same N values of the realistic JSON corpus (`bench/json_corpus.py`: users, orders,
chat messages, tasks) are written to SQLite (synchronous FULL) through `StorageWriter`,
each as its own submission from W concurrent writers, with the codec pipelines `[]`,
`["compress"]`, `["crypto"]` and `["compress", "crypto"]` (zstd level 3, AES-256-GCM),
and with compression by per-map dictionaries trained on the first 2,000 values. Then the
whole file is loaded back (every value decoded). Stored bytes are the value column's
total; the file size is that of the closed database. Each timing is the best of R runs.
Small run: `--values 2000 --repeat 1`.
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import storage as storage_bench  # bench/storage.py: the shared write load
from json_corpus import KINDS, corpus

from topgun.crdt import LWWRecord, Timestamp
from topgun.storage import CodecPipeline, LWWSnapshot, PutRecord, SQLiteBackend
from topgun_compress import DictionaryStore, ZstdCodec, train
from topgun_crypto import AesGcmCodec

T0 = 1_700_000_000_000
KEY = bytes(range(32))


async def write_all(
    path: Path, codecs: CodecPipeline, batch: list[PutRecord], writers: int
) -> float:
    """Seconds to write `batch` to a new SQLite file through `codecs` (`writers` tasks, the
    same load as bench/storage.py's)."""
    elapsed, _ = await storage_bench.write_all(SQLiteBackend(path, codecs=codecs), batch, writers)
    return elapsed


async def load_all(path: Path, codecs: CodecPipeline, expected: dict[str, dict[str, Any]]) -> float:
    backend = SQLiteBackend(path, codecs=codecs)
    await backend.initialize()
    start = time.perf_counter()
    for name, values in expected.items():
        snapshot = await backend.load_map(name)
        assert isinstance(snapshot, LWWSnapshot)
        assert {k: r.value for k, r in snapshot.records.items()} == values
    elapsed = time.perf_counter() - start
    await backend.close()
    return elapsed


def stored_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT sum(length(value)) FROM lww_records").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=100_000)
    parser.add_argument("--writers", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    data = corpus(args.values)
    batch = [
        PutRecord(name, key, LWWRecord(value, Timestamp(T0 + i, 0, "node-1")))
        for i, (name, key, value) in enumerate(data)
    ]
    expected: dict[str, dict[str, Any]] = {}
    for name, key, value in data:
        expected.setdefault(name, {})[key] = value
    msgpack_bytes = sum(len(msgspec.msgpack.encode(value)) for _, _, value in data)
    average = msgpack_bytes / args.values
    print(f"Codecs: {args.values:,} JSON values ({average:.0f} B of msgpack each on average)")
    print(f"from {args.writers} writers into SQLite (synchronous FULL), best of {args.repeat}")
    print(f"Python {platform.python_version()} on {platform.machine()}\n")

    with tempfile.TemporaryDirectory(dir=args.dir) as dictionaries:
        store = DictionaryStore(Path(dictionaries))
        training = data[: min(2000, len(data))]
        for name in KINDS:
            samples = [msgspec.msgpack.encode(v) for m, _, v in training if m == name]
            store.add(name, train(samples, size=8192))
        trained = DictionaryStore(Path(dictionaries))

        def zstd() -> ZstdCodec:
            return ZstdCodec()

        def zstd_dict() -> ZstdCodec:
            return ZstdCodec(dictionaries=trained)

        def aes() -> AesGcmCodec:
            return AesGcmCodec.from_key(KEY)

        setups: list[tuple[str, Callable[[], CodecPipeline]]] = [
            ("none", lambda: CodecPipeline()),
            ("compress", lambda: CodecPipeline([("compress", zstd())])),
            ("encrypt", lambda: CodecPipeline([("crypto", aes())])),
            (
                "compress + encrypt",
                lambda: CodecPipeline([("compress", zstd()), ("crypto", aes())]),
            ),
            ("compress (dictionaries)", lambda: CodecPipeline([("compress", zstd_dict())])),
            (
                "both (dictionaries)",
                lambda: CodecPipeline([("compress", zstd_dict()), ("crypto", aes())]),
            ),
        ]
        header = f"{'codecs':24} {'writes/s':>10} {'stored values':>14} {'vs none':>8}"
        print(f"{header} {'file':>10} {'load all':>9}")
        baseline = None
        for name, make in setups:
            best_write, best_load = float("inf"), float("inf")
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory(dir=args.dir) as directory:
                    path = Path(directory) / "topgun.db"
                    best_write = min(
                        best_write, anyio.run(write_all, path, make(), batch, args.writers)
                    )
                    best_load = min(best_load, anyio.run(load_all, path, make(), expected))
                    stored, size = stored_bytes(path), path.stat().st_size
            baseline = baseline or stored
            print(
                f"{name:24} {args.values / best_write:10,.0f} {stored / 2**20:11.2f} MiB "
                f"{stored / baseline:7.2f}x {size / 2**20:6.2f} MiB {best_load * 1e3:7.0f}ms"
            )


if __name__ == "__main__":
    main()
