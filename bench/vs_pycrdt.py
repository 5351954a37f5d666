"""topgun LWWMap vs pycrdt (Yjs) Map: applying 100,000 remote map updates, in one run.

    python3 dev.py run python bench/vs_pycrdt.py [--updates N] [--repeat R]

Both sides receive the same N keys and values, written on another replica:

- batch:  all N writes arrive as one message. pycrdt: `Doc.apply_update(update)` of the
          writer Doc's full update. topgun: decode one msgpack array of `{key, record}`
          (the shape of SYNC_RESP_LEAF records) into typed records and `merge_many` them.
- per-op: every write arrives as its own message. pycrdt: one `apply_update` per update
          (each made with `get_update(state_before)` on the writer). topgun: decode one
          msgpack `{key, record}` and `merge()` it, per write.

Each timed run starts from an empty receiver (a new Doc / a new LWWMap); producing the
updates is not timed. topgun's Merkle hashing is deferred to its next trie read and is
reported on its own line (pycrdt keeps no such summary). Best of R runs.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any, TypeVar

import msgspec
from pycrdt import Doc, Map

from topgun.crdt import HLC, LWWMap, LWWRecord

T0 = 1_700_000_000_000
R = TypeVar("R")


class Entry(msgspec.Struct):
    """One remote write on the wire: a key and its LWW record."""

    key: str
    record: LWWRecord


def best_of(repeat: int, setup: Callable[[], R], run: Callable[[R], object]) -> tuple[float, R]:
    """Best time of `run(setup())`; building the empty receiver and dropping the filled
    one afterwards are not timed. Returns the time and the last filled receiver."""
    best = float("inf")
    for _ in range(repeat):
        target = setup()
        start = time.perf_counter()
        run(target)
        best = min(best, time.perf_counter() - start)
    return best, target


def receiver() -> LWWMap:
    return LWWMap(HLC("receiver", lambda: T0 + 10**7))


def y_receiver() -> tuple[Doc[Any], Map[Any]]:
    doc: Doc[Any] = Doc()
    return doc, doc.get("m", type=Map)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, repeat = args.updates, args.repeat

    rng = random.Random(11)
    data = [(f"key-{i}", {"name": f"item-{i}", "score": rng.randrange(1000)}) for i in range(n)]

    # --- the writers ---------------------------------------------------------------------
    writer_doc: Doc[Any] = Doc()
    writer_map = writer_doc.get("m", type=Map)
    with writer_doc.transaction():
        for key, value in data:
            writer_map[key] = value
    y_batch = writer_doc.get_update()

    op_doc: Doc[Any] = Doc()
    op_map = op_doc.get("m", type=Map)
    y_ops = []
    state = op_doc.get_state()
    for key, value in data:
        op_map[key] = value
        y_ops.append(op_doc.get_update(state))
        state = op_doc.get_state()

    writer = LWWMap(HLC("writer", lambda: T0))
    entries = [Entry(key, writer.set(key, value)) for key, value in data]
    tg_batch = msgspec.msgpack.encode(entries)
    tg_ops = [msgspec.msgpack.encode(e) for e in entries]
    decode_batch = msgspec.msgpack.Decoder(list[Entry]).decode
    decode_one = msgspec.msgpack.Decoder(Entry).decode
    pairs = [(e.key, e.record) for e in entries]

    # Setup data is long-lived: freeze it so the cyclic GC, which still runs during the
    # measurements, does not re-scan it on every full collection.
    gc.collect()
    gc.freeze()

    # --- the receivers -------------------------------------------------------------------
    def y_apply_batch(y: tuple[Doc[Any], Map[Any]]) -> None:
        y[0].apply_update(y_batch)

    def y_apply_ops(y: tuple[Doc[Any], Map[Any]]) -> None:
        apply = y[0].apply_update
        for update in y_ops:
            apply(update)

    def tg_apply_batch(m: LWWMap) -> None:
        m.merge_many([(e.key, e.record) for e in decode_batch(tg_batch)])

    def tg_merge_batch(m: LWWMap) -> None:
        m.merge_many(pairs)

    def tg_apply_ops(m: LWWMap) -> None:
        merge = m.merge
        for message in tg_ops:
            e = decode_one(message)
            merge(e.key, e.record)

    def tg_merge_ops(m: LWWMap) -> None:
        merge = m.merge
        for key, record in pairs:
            merge(key, record)

    def check(y: tuple[Doc[Any], Map[Any]], m: LWWMap) -> None:
        y_map = y[1]
        assert len(y_map) == len(m.keys()) == n
        assert all(y_map[key] == m.get(key) == value for key, value in data[:: n // 100 or 1])

    timings: dict[str, float] = {}
    timings["y batch"], y_state = best_of(repeat, y_receiver, y_apply_batch)
    timings["y ops"], y_state = best_of(repeat, y_receiver, y_apply_ops)
    for name, run in [
        ("tg batch", tg_apply_batch),
        ("tg batch merge", tg_merge_batch),
        ("tg ops", tg_apply_ops),
        ("tg ops merge", tg_merge_ops),
    ]:
        timings[name], tg_state = best_of(repeat, receiver, run)
        check(y_state, tg_state)
    del tg_state

    def merged() -> LWWMap:
        m = receiver()
        m.merge_many(pairs)
        return m

    hashing, _ = best_of(repeat, merged, lambda m: m.merkle.refresh())

    print(f"Applying {n:,} remote map updates: topgun LWWMap vs pycrdt Map, best of {repeat}")
    print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"pycrdt {version('pycrdt')}, msgspec {version('msgspec')}, seed 11\n"
    )
    print(f"{'measurement':<58} {'time':>9} {'updates/s':>12}")

    def row(label: str, seconds: float) -> None:
        print(f"{label:<58} {seconds * 1000:>6.1f} ms {n / seconds:>12,.0f}")

    row("batch  pycrdt  Doc.apply_update(one update)", timings["y batch"])
    row("batch  topgun  msgpack decode + merge_many", timings["tg batch"])
    row("batch  topgun  merge_many only (records already decoded)", timings["tg batch merge"])
    row("per-op pycrdt  apply_update per write", timings["y ops"])
    row("per-op topgun  msgpack decode + merge() per write", timings["tg ops"])
    row("per-op topgun  merge() only", timings["tg ops merge"])
    row("topgun Merkle re-hash of the merged keys (deferred)", hashing)
    print()
    for label, y, tg in [
        ("batch,  decode + apply", "y batch", "tg batch"),
        ("per-op, decode + apply", "y ops", "tg ops"),
    ]:
        ratio = timings[y] / timings[tg]
        print(f"ratio pycrdt time / topgun time, {label}: {ratio:.2f}x")
    ratio = timings["y batch"] / (timings["tg batch"] + hashing)
    print(f"ratio pycrdt time / topgun time, batch incl. Merkle re-hash: {ratio:.2f}x")


if __name__ == "__main__":
    main()
