"""Ingest sequences (`topgun.server.ingest`): ordering, compaction, persistence across
restarts and crashes, prune floors."""

from __future__ import annotations

import random
from typing import Any

import anyio
import msgspec
import pytest

from topgun.crdt import HLC, LWWRecord, Timestamp
from topgun.server import ingest as ingest_module
from topgun.server.ingest import (
    FLUSH_CHUNK,
    HEADER_NAMESPACE,
    LOG_BLOCK,
    RESERVE,
    IngestLog,
    MapLog,
    chunks_namespace,
    legacy_entries_namespace,
    stored_entries,
)
from topgun.server.maps import MapRegistry, Recording
from topgun.server.writes import Applied
from topgun.storage import (
    MemoryBackend,
    MemoryStore,
    PruneRecord,
    PutMeta,
    PutRecord,
    StorageError,
)

pytestmark = pytest.mark.anyio

NOW = 1_700_000_000_000


def ts(counter: int, millis: int = NOW, node: str = "n") -> Timestamp:
    return Timestamp(millis, counter, node)


class Node:
    """A registry and ingest log over a store that outlives it (a server and its disk)."""

    def __init__(self, store: MemoryStore) -> None:
        self.clock = [NOW + 1000]
        self.hlc = HLC("server", lambda: self.clock[0])
        self.maps = MapRegistry(self.hlc)
        self.ingest = IngestLog(self.maps, self.hlc)
        self.backend = MemoryBackend(store=store)

    async def start(self, *, sequence: bool = True) -> int:
        """Load; then sequence map `m` (a no-op once it is), as its first poll would."""
        await self.backend.initialize()
        await self.maps.load(self.backend)
        fresh = await self.ingest.load(self.backend)
        if sequence:
            await self.ingest.sequence("m")
        return fresh

    async def write(self, key: str, value: object, stamp: Timestamp) -> Recording:
        """Apply and persist one LWW write as the write pipeline does (entries unflushed)."""
        lww = self.maps.lww("m")
        previous = lww.get_record(key) if lww is not None else None
        with self.maps.recording() as recording:
            self.maps.merge_lww("m", key, LWWRecord(value, stamp))
        self.ingest.observe([Applied("m", key, previous, recording.events)], recording)
        await self.backend.store_batch(recording.changes)
        return recording

    async def flush(self) -> int:
        """Persist the due entries, each submission stored at once; returns how many."""
        backend = self.backend

        class Stored:
            async def wait(self) -> None:
                return None

        async def submit(changes: Any) -> Any:
            await backend.store_batch(changes)
            return Stored()

        return await self.ingest.flush(submit)

    def keys_after(self, seq: int) -> list[str]:
        return [change.key for change in self.ingest.delta("m", since_seq=seq).records]


async def flushed_node(store: MemoryStore, *, keys: int) -> Node:
    """A started node over `store` that wrote keys k0.. and flushed their entries."""
    node = Node(store)
    await node.start()
    for i in range(keys):
        await node.write(f"k{i}", i, ts(i))
    await node.flush()
    return node


async def test_changes_are_numbered_in_order_and_compacted_per_key() -> None:
    node = Node(MemoryStore())
    await node.start()
    for i, key in enumerate(["a", "b", "a", "c", "a"]):
        await node.write(key, i, ts(i))
    delta = node.ingest.delta("m", since_seq=0)
    assert [(c.key, c.seq) for c in delta.records] == [("b", 2), ("c", 4), ("a", 5)]
    assert delta.seq == 5
    assert node.keys_after(4) == ["a"]
    assert node.keys_after(5) == []


async def test_a_late_write_with_an_old_timestamp_gets_a_new_sequence() -> None:
    node = Node(MemoryStore())
    await node.start()
    await node.write("fresh", 1, ts(5))
    cursor = node.ingest.delta("m").seq
    stamp_cursor = node.ingest.delta("m").sync_timestamp
    await node.write("late", 2, ts(0, NOW - 86_400_000, "offline"))
    assert node.keys_after(cursor) == ["late"]
    by_stamp = node.ingest.delta("m", since_stamp=stamp_cursor)
    assert [c.key for c in by_stamp.records] == ["late"]


async def test_sequences_survive_a_clean_restart() -> None:
    store = MemoryStore()
    await flushed_node(store, keys=3)

    second = Node(store)
    assert await second.start() == 0  # nothing needed new sequences
    assert [(c.key, c.seq) for c in second.ingest.delta("m").records] == [
        ("k0", 1),
        ("k1", 2),
        ("k2", 3),
    ]
    await second.write("k3", 3, ts(3))
    (change,) = second.ingest.delta("m", since_seq=3).records
    assert change.key == "k3"
    assert change.seq > RESERVE  # past every sequence the first run could have issued


async def test_changes_not_flushed_before_a_crash_get_fresh_sequences() -> None:
    """After a crash the entries of the last interval are missing or stale: those keys are
    sequenced again above every issued sequence, so no poller misses them."""
    store = MemoryStore()
    first = Node(store)
    await first.start()
    await first.write("a", 1, ts(1))
    await first.write("b", 1, ts(2))
    await first.flush()
    cursor = first.ingest.delta("m").seq  # a poller saw everything so far
    await first.write("b", 2, ts(3))  # changed after the flush
    await first.write("c", 1, ts(4))  # new after the flush
    # crash: no flush

    second = Node(store)
    assert await second.start() == 2
    assert second.keys_after(cursor) == ["b", "c"]
    seqs = {c.key: c.seq for c in second.ingest.delta("m").records}
    assert seqs["a"] == 1
    assert min(seqs["b"], seqs["c"]) > first.ingest.log("m").seq


async def test_the_reservation_is_written_with_the_change_that_needs_it() -> None:
    """Sequencing the map committed a block; the change that crosses half of it carries
    the next reservation in its own batch, the ones before and after it none."""
    node = Node(MemoryStore())
    await node.start()
    log = node.ingest.log("m")
    assert log.reserved == RESERVE
    before = await node.write("a", 1, ts(1))
    assert not [c for c in before.changes if isinstance(c, PutMeta)]
    log.seq = RESERVE // 2  # as if half the block had been handed out
    recording = await node.write("b", 1, ts(2))
    headers = [c for c in recording.changes if isinstance(c, PutMeta)]
    assert [h.namespace for h in headers] == [HEADER_NAMESPACE]
    assert msgspec.msgpack.decode(headers[0].value)[0] == log.reserved == log.seq + RESERVE
    later = await node.write("c", 1, ts(3))
    assert not [c for c in later.changes if isinstance(c, PutMeta)]


async def test_pruned_tombstones_raise_the_floor_and_older_cursors_reset() -> None:
    node = Node(MemoryStore())
    await node.start()
    await node.write("a", 1, ts(1))
    await node.write("gone", None, ts(2))
    await node.write("b", 1, ts(3))
    extra = node.ingest.pruned([PruneRecord("m", "gone", ts(9))])
    assert [c.namespace for c in extra] == [HEADER_NAMESPACE]
    assert node.ingest.log("m").floor == 2
    assert node.ingest.delta("m", since_seq=1).reset
    assert not node.ingest.delta("m", since_seq=2).reset
    assert not node.ingest.delta("m", since_seq=0).reset  # a new reader needs no tombstone
    await node.backend.store_batch(extra)
    await node.flush()
    assert "gone" not in await stored_entries(node.backend, "m")

    restarted = Node(node.backend.store)
    await restarted.start()
    assert restarted.ingest.log("m").floor == 2


async def test_a_cursor_beyond_the_current_sequence_resets() -> None:
    node = Node(MemoryStore())
    await node.start()
    await node.write("a", 1, ts(1))
    delta = node.ingest.delta("m", since_seq=50)
    assert delta.reset
    assert [c.key for c in delta.records] == ["a"]


async def test_limit_pages_and_the_log_stays_compact() -> None:
    node = Node(MemoryStore())
    await node.start()
    for i in range(500):
        await node.write(f"k{i % 10}", i, ts(i))
    log = node.ingest.log("m")
    assert len(log.latest) == 10
    assert log.entries() <= 2 * LOG_BLOCK
    page = node.ingest.delta("m", since_seq=0, limit=4)
    assert page.has_more
    assert len(page.records) == 4
    assert page.seq == page.records[-1].seq


async def test_a_map_is_sequenced_on_its_first_delta_with_every_record() -> None:
    """Maps only WebSocket clients use are not sequenced; the first delta asked of one
    sequences all its records, commits the reservation, and from then on (restarts
    included) every change is sequenced above it."""
    store = MemoryStore()
    backend = MemoryBackend(store=store)
    await backend.initialize()
    await backend.store_batch([PutRecord("m", f"k{i}", LWWRecord(i, ts(10 - i))) for i in range(3)])
    node = Node(store)
    assert await node.start(sequence=False) == 0
    await node.write("k3", 3, ts(20))  # not sequenced: nobody polls the map yet
    assert "m" not in node.ingest.logs
    assert await node.backend.load_meta(HEADER_NAMESPACE) == {}

    delta = await node.ingest.loaded_delta("m")
    assert sorted(c.key for c in delta.records) == ["k0", "k1", "k2", "k3"]
    assert [c.seq for c in delta.records] == [1, 2, 3, 4]
    header = msgspec.msgpack.decode((await node.backend.load_meta(HEADER_NAMESPACE))["m"])
    assert header[0] == 4 + RESERVE  # committed before the delta was served

    await node.write("k0", "again", ts(30))
    assert node.keys_after(4) == ["k0"]
    await node.flush()
    restarted = Node(store)
    assert await restarted.start(sequence=False) == 0
    assert restarted.keys_after(4) == ["k0"]  # sequenced across the restart
    await restarted.write("k1", "later", ts(40))
    assert restarted.keys_after(5)[-1] == "k1"
    assert restarted.ingest.log("m").seq > 4 + RESERVE  # above every reserved sequence


async def test_a_map_is_sequenced_a_chunk_at_a_time_missing_no_change_made_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sequencing yields between chunks; changes made meanwhile, to keys already sequenced,
    not yet reached, or new, are each in the first delta exactly once, with their newest
    record, and nobody gets the log before the map is fully sequenced."""
    monkeypatch.setattr(ingest_module, "FILL_CHUNK", 10)
    node = Node(MemoryStore())
    await node.start(sequence=False)
    for i in range(100):
        await node.write(f"k{i}", i, ts(i + 1))
    async with anyio.create_task_group() as tg:
        tg.start_soon(node.ingest.sequence, "m")
        with anyio.fail_after(5):
            while "m" not in node.ingest.logs or not node.ingest.logs["m"].latest:
                await anyio.lowlevel.checkpoint()
        assert len(node.ingest.logs["m"].latest) < 100  # part way
        await node.write("k1", "changed", ts(500))
        await node.write("k95", "changed", ts(501))
        await node.write("new", "changed", ts(502))
        log = await node.ingest.sequence("m")  # waits for the first call to finish
        assert "m" not in node.ingest._unready
    records = node.ingest.delta("m").records
    assert sorted(c.key for c in records) == sorted([f"k{i}" for i in range(100)] + ["new"])
    changed = {c.key: c.record.value for c in records if c.record.value == "changed"}
    assert set(changed) == {"k1", "k95", "new"}
    assert log.seq == 101 + 1  # every key once, plus k1 again


async def test_no_entry_is_stored_before_the_maps_reservation_is_committed() -> None:
    """A map whose first reservation failed to commit is sequenced in memory (its changes
    keep their order) but none of its entries is stored until a later call commits the
    reservation: storage never holds entries of a map it does not know as sequenced."""
    node = Node(MemoryStore())
    await node.start(sequence=False)
    await node.write("a", 1, ts(1))
    real_write = node.ingest._write

    async def refused(changes: Any) -> None:
        raise StorageError("disk full")

    node.ingest._write = refused  # type: ignore[method-assign]
    with pytest.raises(StorageError):
        await node.ingest.sequence("m")
    await node.write("b", 1, ts(2))  # sequenced in memory meanwhile
    assert await node.flush() == 0
    assert await node.backend.load_meta(chunks_namespace("m")) == {}
    assert await node.backend.load_meta(HEADER_NAMESPACE) == {}

    gate = anyio.Event()

    async def gated(changes: Any) -> None:
        await gate.wait()
        await real_write(changes)

    node.ingest._write = gated  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(node.ingest.sequence, "m")  # the retry, its commit held back
        await anyio.lowlevel.checkpoint()
        await node.write("c", 1, ts(3))
        assert await node.flush() == 0  # still not committed: nothing stored
        assert await node.backend.load_meta(chunks_namespace("m")) == {}
        gate.set()
    log = await node.ingest.sequence("m")
    assert sorted(node.keys_after(0)) == ["a", "b", "c"]
    assert log.seq == 3
    assert await node.flush() == 3
    assert set(await stored_entries(node.backend, "m")) == {"a", "b", "c"}


async def test_after_a_restart_ingest_stamps_follow_the_stored_ones() -> None:
    """A client clock ahead of the server pushed the ingest clock forward; after a restart
    the server's clock is behind again, but new changes still sort after every cursor
    handed out before (TS clients resume from `serverSyncTimestamp`)."""
    store = MemoryStore()
    first = Node(store)
    await first.start()
    first.hlc.update(ts(0, NOW + 50_000, "fast-client"))  # a clock 50 s in the future
    await first.write("a", 1, ts(1))  # stored with an old timestamp, ingested "at +50 s"
    await first.flush()
    cursor = first.ingest.delta("m").records[-1].ingest
    second = Node(store)  # a fresh process: its wall clock is NOW + 1 s again
    await second.start()
    await second.write("b", 1, ts(2))
    (change,) = second.ingest.delta("m", since_stamp=cursor).records
    assert change.key == "b"


async def test_a_backlog_is_flushed_in_chunks_and_a_failed_chunk_stays_due() -> None:
    """Many changed keys are persisted a chunk per transaction (the event loop and other
    commits are never held up by one huge batch); a chunk that fails is retried later."""
    node = Node(MemoryStore())
    await node.start()
    for i in range(2 * FLUSH_CHUNK + 10):
        await node.write(f"k{i}", i, ts(i))
    batches: list[int] = []

    class Done:
        async def wait(self) -> None:
            return None

    async def failing(changes: Any) -> Any:
        raise OSError("disk full")

    async def submit(changes: Any) -> Any:
        batches.append(len(changes))
        await node.backend.store_batch(changes)
        return Done()

    with pytest.raises(OSError, match="disk full"):
        await node.ingest.flush(failing)
    assert await node.ingest.flush(submit) == 2 * FLUSH_CHUNK + 10
    assert batches == [1, 1, 1]  # one chunk row each
    stored = await stored_entries(node.backend, "m")
    assert len(stored) == 2 * FLUSH_CHUNK + 10


async def test_a_chunk_goes_once_none_of_its_entries_is_the_latest() -> None:
    node = Node(MemoryStore())
    await node.start()
    for i in range(5):
        await node.write(f"k{i}", i, ts(i))
    assert await node.flush() == 5
    rows = await node.backend.load_meta(chunks_namespace("m"))
    assert len(rows) == 1
    for i in range(5):
        await node.write(f"k{i}", i, ts(10 + i))
    assert await node.flush() == 5
    newer = await node.backend.load_meta(chunks_namespace("m"))
    assert len(newer) == 1
    assert newer.keys() != rows.keys()  # the old chunk was deleted
    stored = await stored_entries(node.backend, "m")
    assert {key: seq for key, (seq, _, _) in stored.items()} == {f"k{i}": 6 + i for i in range(5)}


async def test_mostly_stale_chunks_are_rewritten_so_storage_stays_bounded() -> None:
    """Each flush holds hot keys written every round and one key written once: without
    compaction every chunk would stay (its once-written key keeps it) with 250 stale
    entries, 5,020 entries for 270 keys after 20 rounds."""
    node = Node(MemoryStore())
    await node.start()
    hot = [f"hot{i}" for i in range(250)]
    for round_ in range(20):
        for i, key in enumerate([*hot, f"once{round_}"]):
            await node.write(key, round_, ts(i, NOW + round_))
        await node.flush()
    rows = await node.backend.load_meta(chunks_namespace("m"))
    held = sum(len(msgspec.msgpack.decode(raw)) for raw in rows.values())
    assert held <= 2 * (250 + 20) + FLUSH_CHUNK
    restarted = Node(node.backend.store)
    assert await restarted.start() == 0  # every key's entry survived the rewrites
    assert {c.key: c.seq for c in restarted.ingest.delta("m").records} == {
        c.key: c.seq for c in node.ingest.delta("m").records
    }


async def test_entries_of_the_one_row_per_key_layout_are_kept_and_moved_into_chunks() -> None:
    store = MemoryStore()
    first = await flushed_node(store, keys=3)
    seqs = {c.key: c.seq for c in first.ingest.delta("m").records}
    # Rewrite what was stored in the earlier layout: one row per key, no chunks.
    stored = await stored_entries(first.backend, "m")
    chunk_rows = await first.backend.load_meta(chunks_namespace("m"))
    await first.backend.store_batch(
        [PutMeta(chunks_namespace("m"), key, None) for key in chunk_rows]
        + [
            PutMeta(legacy_entries_namespace("m"), key, msgspec.msgpack.encode([seq, ingest, rec]))
            for key, (seq, ingest, rec) in stored.items()
        ]
    )
    second = Node(store)
    assert await second.start() == 0  # the old entries were recognised: no new sequences
    assert {c.key: c.seq for c in second.ingest.delta("m").records} == seqs
    assert await second.backend.load_meta(legacy_entries_namespace("m")) == {}
    assert await stored_entries(second.backend, "m") == stored


@pytest.mark.parametrize("filled", [0, 2500], ids=["empty", "filled"])
def test_the_log_answers_every_resume_point_as_a_plain_list_would(filled: int) -> None:
    """Blocks come and go and are rewritten as keys change; every resume point (by sequence
    or by ingest stamp) still gives exactly the keys whose latest change is after it, and
    the log stays within about twice its keys. A log that starts from `fill` (a map being
    sequenced) behaves as if each key had been added."""
    rng = random.Random(7)
    log = MapLog()
    model: dict[str, tuple[int, Timestamp]] = {}
    # `fill` (a map being sequenced, in chunks, while other changes are added)
    seq = 0
    halves = [[f"k{i}" for i in range(filled // 2)], [f"k{i}" for i in range(filled // 2, filled)]]
    for part in halves if filled else []:
        stamps = [Timestamp(NOW, seq + n, "s") for n in range(1, len(part) + 1)]
        log.fill(part, stamps)
        model.update(
            {
                key: (seq + n, stamp)
                for n, (key, stamp) in enumerate(zip(part, stamps, strict=True), 1)
            }
        )
        seq = log.seq = seq + len(part) + 1  # as `observe` numbers a change
        log.add("between", seq, Timestamp(NOW, seq, "s"))
        model["between"] = (seq, Timestamp(NOW, seq, "s"))
    assert log.seq == seq
    first = seq + 1
    for seq in range(first, first + 20_000):
        key = f"k{rng.randrange(300 if seq < 10_000 else 3000)}"
        if rng.random() < 0.02 and model:
            gone = rng.choice(sorted(model))
            assert log.forget(gone) == model.pop(gone)
        stamp = Timestamp(NOW, seq, "s")
        log.add(key, seq, stamp)
        model[key] = (seq, stamp)
        if seq % 997 == 0:
            for since in (0, seq // 2, seq - 5, seq):
                expected = sorted((s, k) for k, (s, _) in model.items() if s > since)
                by_seq = [(s, k) for k, s, _ in log.changes_after(seq=since)]
                by_stamp = [
                    (s, k) for k, s, _ in log.changes_after(stamp=Timestamp(NOW, since, "s"))
                ]
                assert by_seq == expected
                assert by_stamp == expected
            assert log.entries() <= 2 * len(model) + 2 * LOG_BLOCK
    assert [k for k, _, _ in log.changes_after()] == sorted(model, key=lambda k: model[k][0])
