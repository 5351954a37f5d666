"""The storage contract as a test suite, for every backend (built-in or plugin) to pass.

Subclass `BackendConformance` in a test module and provide the fixture `open_backend`: a
callable that returns a *new, uninitialized* backend over the same durable place each
time it is called (so the suite can close it and open it again), using the codec
pipeline it is given:

```text
import pytest
from topgun.storage.conformance import BackendConformance

class TestMyBackend(BackendConformance):
    @pytest.fixture
    def open_backend(self, tmp_path):
        return lambda codecs=None: MyBackend(tmp_path / "data", codecs=codecs)
```

The suite needs pytest and anyio's pytest plugin (installed with anyio); its tests run on
the `anyio_backend` fixture's event loop (asyncio unless the test module overrides it).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import msgspec
import pytest

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.storage.codecs import CodecContext, CodecPipeline
from topgun.storage.contract import (
    AddORRecord,
    Change,
    DeleteKey,
    LWWSnapshot,
    MapInfo,
    MapPage,
    ORSnapshot,
    PagedBackend,
    PruneORTag,
    PruneRecord,
    PutMeta,
    PutRecord,
    RecodableBackend,
    RemoveORTag,
    StorageBackend,
    StoredValue,
)
from topgun.storage.errors import (
    InvalidChangeError,
    MapKindError,
    StorageClosedError,
    StorageConfigError,
    ValueCodecError,
)
from topgun.storage.writer import StorageWriter

MAX_SAFE = 2**53 - 1

VALUES: list[Any] = [
    "text",
    "ünïcödé ✓ 𝄞",
    "",
    0,
    -1,
    MAX_SAFE,
    -(2**63),
    2**64 - 1,
    1.0,
    0.1,
    -0.0,
    math.inf,
    True,
    False,
    b"\x00\xffbytes",
    [],
    [1, "two", [3.0], {"four": None}],
    {},
    {"title": "buy milk", "done": False, "tags": ["a", "b"], "n": {"deep": [1, 2]}},
]
"""Values a record may hold, all of which must read back with their exact types."""

KEYS = ["k", "", "with space", "ünïcödé", "a\x00b", "emoji 😀", "x" * 1000]
"""Keys that must round-trip, NUL and astral characters included."""


def ts(millis: int, counter: int = 0, node: str = "node-a") -> Timestamp:
    return Timestamp(millis, counter, node)


def or_record(value: Any, timestamp: Timestamp, ttl_ms: float | None = None) -> ORMapRecord:
    return ORMapRecord(value, timestamp, str(timestamp), ttl_ms)


def exact(records: Mapping[str, object]) -> bytes:
    """A byte form of `records` that tells apart what `==` does not (`1` vs `1.0` vs
    `True`, `-0.0` vs `0.0`), independent of key order."""
    return msgspec.msgpack.encode(sorted(records.items()))


class OpenBackend(Protocol):
    """The `open_backend` fixture: a new backend over the same durable place."""

    def __call__(self, codecs: CodecPipeline | None = None) -> StorageBackend: ...


class Zlib:
    """A context-free codec (a `topgun.hooks.ValueCodec`)."""

    def encode(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decode(self, data: bytes) -> bytes:
        return zlib.decompress(data)


class Sealed:
    """A contextual codec that binds bytes to their context, as encryption would (a
    CRC of the associated data in front; decoding under another context fails)."""

    def __init__(self) -> None:
        self.contexts: list[CodecContext] = []

    def encode_for(self, data: bytes, context: CodecContext) -> bytes:
        self.contexts.append(context)
        return zlib.crc32(context.associated_data()).to_bytes(4, "big") + data[::-1]

    def decode_for(self, data: bytes, context: CodecContext) -> bytes:
        if data[:4] != zlib.crc32(context.associated_data()).to_bytes(4, "big"):
            raise ValueError("sealed for another context")
        return data[4:][::-1]


class FailingDecode(Sealed):
    """Encodes like `Sealed` and fails every decode."""

    def decode_for(self, data: bytes, context: CodecContext) -> bytes:
        raise ValueError("key material is gone")


class BackendConformance:
    """The contract every storage backend keeps (see the module docstring to use it)."""

    @pytest.fixture
    def open_backend(self) -> OpenBackend:
        """Override in the subclass: a new backend over the same durable place per call."""
        raise NotImplementedError("define the open_backend fixture in the subclass")

    @asynccontextmanager
    async def opened(
        self, open_backend: OpenBackend, codecs: CodecPipeline | None = None
    ) -> AsyncIterator[StorageBackend]:
        backend = open_backend(codecs)
        await backend.initialize()
        try:
            yield backend
        finally:
            await backend.close()

    # --- basics ------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_new_storage_is_empty(self, open_backend: OpenBackend) -> None:
        async with self.opened(open_backend) as backend:
            assert await backend.list_maps() == []
            assert await backend.load_map("todos") is None
            assert await backend.load_keys("todos", ["a"]) is None
            assert await backend.load_meta("locks") == {}

    @pytest.mark.anyio
    async def test_initialize_and_close_twice_are_harmless(self, open_backend: OpenBackend) -> None:
        backend = open_backend(None)
        await backend.initialize()
        await backend.initialize()
        await backend.store_batch([PutRecord("m", "k", LWWRecord(1, ts(1)))])
        await backend.close()
        await backend.close()
        async with self.opened(open_backend) as again:
            assert await again.list_maps() == [MapInfo("m", "lww")]

    @pytest.mark.anyio
    async def test_use_before_initialize_or_after_close_is_an_error(
        self, open_backend: OpenBackend
    ) -> None:
        backend = open_backend(None)
        with pytest.raises(StorageClosedError, match="not initialized"):
            await backend.list_maps()
        await backend.initialize()
        await backend.close()
        with pytest.raises(StorageClosedError, match="closed"):
            await backend.load_map("m")
        with pytest.raises(StorageClosedError, match="closed"):
            await backend.store_batch([PutMeta("ns", "k", b"v")])
        with pytest.raises(StorageClosedError):
            await backend.initialize()

    # --- LWW ---------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_lww_records_round_trip_exactly_across_reopen(
        self, open_backend: OpenBackend
    ) -> None:
        records = {
            f"v{i}": LWWRecord(value, ts(1_700_000_000_000 + i, i))
            for i, value in enumerate(VALUES)
        }
        records |= {key: LWWRecord(key, ts(5, 1, "ünï-node")) for key in KEYS}
        records["tombstone"] = LWWRecord(None, ts(MAX_SAFE, MAX_SAFE, "z"))
        records["ttl-int"] = LWWRecord("x", ts(7), ttl_ms=5000)
        records["ttl-float"] = LWWRecord("x", ts(7), ttl_ms=0.5)
        records["ttl-whole-float"] = LWWRecord("x", ts(7), ttl_ms=5000.0)
        records["zero"] = LWWRecord(0, ts(0, 0, ""))
        async with self.opened(open_backend) as backend:
            await backend.store_batch([PutRecord("todos", k, r) for k, r in records.items()])
        async with self.opened(open_backend) as backend:
            snapshot = await backend.load_map("todos")
        assert isinstance(snapshot, LWWSnapshot)
        assert snapshot.kind == "lww"
        assert snapshot.name == "todos"
        assert snapshot.records == records
        assert exact(snapshot.records) == exact(records)

    @pytest.mark.anyio
    async def test_a_record_replaces_only_an_older_one(self, open_backend: OpenBackend) -> None:
        async with self.opened(open_backend) as backend:
            await backend.store_batch([PutRecord("m", "k", LWWRecord("v2", ts(2)))])
            await backend.store_batch(
                [
                    PutRecord("m", "k", LWWRecord("older", ts(1, 9))),
                    PutRecord("m", "k", LWWRecord("same", ts(2))),
                ]
            )
            assert await _lww(backend, "m") == {"k": LWWRecord("v2", ts(2))}
            await backend.store_batch(
                [PutRecord("m", "k", LWWRecord("by-node", ts(2, 0, "node-b")))]
            )
            assert await _lww(backend, "m") == {"k": LWWRecord("by-node", ts(2, 0, "node-b"))}
            await backend.store_batch([PutRecord("m", "k", LWWRecord(None, ts(3)))])
            assert await _lww(backend, "m") == {"k": LWWRecord(None, ts(3))}
            await backend.store_batch([PutRecord("m", "k", LWWRecord("back", ts(4), 10))])
            assert await _lww(backend, "m") == {"k": LWWRecord("back", ts(4), 10)}

    @pytest.mark.anyio
    async def test_prune_record_forgets_only_tombstones_older_than_the_horizon(
        self, open_backend: OpenBackend
    ) -> None:
        async with self.opened(open_backend) as backend:
            await backend.store_batch(
                [
                    PutRecord("m", "old-tombstone", LWWRecord(None, ts(10))),
                    PutRecord("m", "new-tombstone", LWWRecord(None, ts(30))),
                    PutRecord("m", "old-value", LWWRecord("kept", ts(10))),
                ]
            )
            horizon = ts(20)
            await backend.store_batch(
                [
                    PruneRecord("m", k, horizon)
                    for k in ("old-tombstone", "new-tombstone", "old-value", "absent")
                ]
                + [PruneRecord("never-stored", "k", horizon)]
            )
            assert await _lww(backend, "m") == {
                "new-tombstone": LWWRecord(None, ts(30)),
                "old-value": LWWRecord("kept", ts(10)),
            }
            assert await backend.list_maps() == [MapInfo("m", "lww")]

    # --- OR-Map ------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_or_records_and_tombstones_round_trip_across_reopen(
        self, open_backend: OpenBackend
    ) -> None:
        a1, a2, b1 = or_record("x", ts(1)), or_record({"n": 1}, ts(2), 5000), or_record(1.0, ts(3))
        gone = or_record("gone", ts(4))
        async with self.opened(open_backend) as backend:
            await backend.store_batch(
                [AddORRecord("tags", "a", r) for r in (a2, a1)]
                + [AddORRecord("tags", "b", b1), AddORRecord("tags", "b", gone)]
            )
            await backend.store_batch(
                [
                    RemoveORTag("tags", gone.tag),  # the key is found from the stored record
                    RemoveORTag("tags", str(ts(5)), key="c"),  # not seen here; key known
                    RemoveORTag("tags", str(ts(6))),  # not seen here; key unknown
                ]
            )
        async with self.opened(open_backend) as backend:
            snapshot = await backend.load_map("tags")
            assert await backend.list_maps() == [MapInfo("tags", "ormap")]
        assert isinstance(snapshot, ORSnapshot)
        assert snapshot.kind == "ormap"
        assert snapshot.records == {"a": [a1, a2], "b": [b1]}
        assert exact(snapshot.records) == exact({"a": [a1, a2], "b": [b1]})
        assert snapshot.tombstones == {gone.tag: "b", str(ts(5)): "c", str(ts(6)): None}

    @pytest.mark.anyio
    async def test_a_tombstoned_tag_is_never_stored_again(self, open_backend: OpenBackend) -> None:
        record = or_record("v", ts(1))
        async with self.opened(open_backend) as backend:
            await backend.store_batch(
                [
                    AddORRecord("m", "k", record),
                    RemoveORTag("m", record.tag),
                    AddORRecord("m", "k", record),  # same batch, after the tombstone
                ]
            )
            await backend.store_batch([AddORRecord("m", "other", record)])  # a later batch
            snapshot = await backend.load_map("m")
        assert isinstance(snapshot, ORSnapshot)
        assert snapshot.records == {}
        assert snapshot.tombstones == {record.tag: "k"}

    @pytest.mark.anyio
    async def test_adding_a_stored_tag_again_changes_nothing(
        self, open_backend: OpenBackend
    ) -> None:
        record = or_record("first", ts(1))
        async with self.opened(open_backend) as backend:
            await backend.store_batch([AddORRecord("m", "k", record)])
            await backend.store_batch([AddORRecord("m", "k", or_record("first", ts(1), 99))])
            assert await _or(backend, "m") == {"k": [record]}

    @pytest.mark.anyio
    async def test_a_later_tombstone_keeps_the_key_first_recorded(
        self, open_backend: OpenBackend
    ) -> None:
        tag = str(ts(1))
        async with self.opened(open_backend) as backend:
            await backend.store_batch([RemoveORTag("m", tag)])
            await backend.store_batch([RemoveORTag("m", tag, key="k")])
            await backend.store_batch([RemoveORTag("m", tag, key="other")])
            snapshot = await backend.load_map("m")
        assert isinstance(snapshot, ORSnapshot)
        assert snapshot.tombstones == {tag: "k"}

    @pytest.mark.anyio
    async def test_prune_or_tag_forgets_the_tombstone(self, open_backend: OpenBackend) -> None:
        old, new = or_record("old", ts(1)), or_record("new", ts(2))
        async with self.opened(open_backend) as backend:
            await backend.store_batch([AddORRecord("m", "k", r) for r in (old, new)])
            await backend.store_batch([RemoveORTag("m", old.tag), RemoveORTag("m", new.tag)])
            await backend.store_batch([PruneORTag("m", old.tag), PruneORTag("m", "absent")])
            snapshot = await backend.load_map("m")
        assert isinstance(snapshot, ORSnapshot)
        assert snapshot.tombstones == {new.tag: "k"}

    # --- keys, deletes, meta -----------------------------------------------------------

    @pytest.mark.anyio
    async def test_load_keys_returns_only_those_keys(self, open_backend: OpenBackend) -> None:
        lww = {f"k{i:04}": LWWRecord(i, ts(i + 1)) for i in range(1200)}
        a, b = or_record("a", ts(1)), or_record("b", ts(2))
        async with self.opened(open_backend) as backend:
            await backend.store_batch(
                [PutRecord("m", k, r) for k, r in lww.items()]
                + [AddORRecord("o", "a", a), AddORRecord("o", "b", b), RemoveORTag("o", b.tag)]
            )
            wanted = [f"k{i:04}" for i in range(0, 1200, 2)] + ["absent"]
            snapshot = await backend.load_keys("m", iter(wanted))
            assert isinstance(snapshot, LWWSnapshot)
            assert snapshot.records == {k: lww[k] for k in wanted if k in lww}
            assert await backend.load_keys("m", []) == LWWSnapshot("m", {})
            just_b = await backend.load_keys("o", ["b"])
            assert just_b == ORSnapshot("o", {}, {b.tag: "b"})
            just_a = await backend.load_keys("o", ["a", "zzz"])
            assert just_a == ORSnapshot("o", {"a": [a]}, {})
            assert await backend.load_keys("nope", ["a"]) is None

    @asynccontextmanager
    async def paged(self, open_backend: OpenBackend) -> AsyncIterator[PagedBackend]:
        async with self.opened(open_backend) as backend:
            if not isinstance(backend, PagedBackend):
                pytest.skip(f"{type(backend).__name__} is not a PagedBackend")
            yield backend

    @pytest.mark.anyio
    async def test_load_page_hands_out_every_key_once_in_order(
        self, open_backend: OpenBackend
    ) -> None:
        lww = {k: LWWRecord(k, ts(i + 1)) for i, k in enumerate(KEYS)} | {
            "dead": LWWRecord(None, ts(9))
        }
        a, b, gone = or_record("a", ts(1)), or_record({"b": 1}, ts(2), 50), or_record("x", ts(3))
        async with self.paged(open_backend) as backend:
            await backend.store_batch(
                [PutRecord("m", k, r) for k, r in lww.items()]
                + [AddORRecord("o", k, a) for k in ("", "emoji 😀")]
                + [
                    AddORRecord("o", k, r)
                    for k, r in (("k", b), ("k", gone), ("z", or_record(1, ts(4))))
                ]
                + [RemoveORTag("o", gone.tag), RemoveORTag("o", str(ts(5)), key="only-dead")]
                + [RemoveORTag("o", str(ts(6)))]
            )
            whole = {}
            for name in ("m", "o"):
                pages, after = [], None
                while True:
                    page = await backend.load_page(name, after, 2)
                    assert page is not None
                    assert len(page.snapshot.records) <= 2
                    pages.append(page)
                    if page.next_after is None:
                        break
                    assert page.next_after == max(page.snapshot.records)
                    after = page.next_after
                keys = [key for page in pages for key in page.snapshot.records]
                assert keys == sorted(keys)
                assert len(set(keys)) == len(keys)
                whole[name] = pages
            assert {k: r for p in whole["m"] for k, r in p.snapshot.records.items()} == lww
            assert len(whole["m"]) == 4  # 8 keys, 2 a page (the last page is full)
            stored = await backend.load_map("o")
            assert isinstance(stored, ORSnapshot)
            first, *later = [p.snapshot for p in whole["o"]]
            assert isinstance(first, ORSnapshot)
            assert first.tombstones == stored.tombstones  # every tombstone, on the first page
            assert all(isinstance(p, ORSnapshot) and p.tombstones == {} for p in later)
            assert {k: r for p in whole["o"] for k, r in p.snapshot.records.items()} == (
                stored.records
            )
            assert await backend.load_page("m", "\U0010ffff", 5) == MapPage(
                LWWSnapshot("m", {}), None
            )
            assert await backend.load_page("nope", None, 5) is None
            with pytest.raises(ValueError, match="at least 1"):
                await backend.load_page("m", None, 0)
            with pytest.raises(TypeError, match="after"):
                await backend.load_page("m", 5, 1)  # type: ignore[arg-type]

    @pytest.mark.anyio
    async def test_delete_forgets_keys_of_either_kind(self, open_backend: OpenBackend) -> None:
        x, y = or_record("x", ts(1)), or_record("y", ts(2))
        async with self.opened(open_backend) as backend:
            await backend.store_batch(
                [PutRecord("m", k, LWWRecord(k, ts(1))) for k in ("a", "b")]
                + [AddORRecord("o", "a", x), AddORRecord("o", "b", y), RemoveORTag("o", x.tag)]
            )
            await backend.delete("m", ["a", "absent"])
            await backend.delete("o", ["a"])
            await backend.delete("never-stored", ["a"])
            assert await _lww(backend, "m") == {"b": LWWRecord("b", ts(1))}
            assert await backend.load_map("o") == ORSnapshot("o", {"b": [y]}, {})
            await backend.store_batch([DeleteKey("o", "b")])
            assert await backend.load_map("o") == ORSnapshot("o", {}, {})
            assert await backend.list_maps() == [MapInfo("m", "lww"), MapInfo("o", "ormap")]

    @pytest.mark.anyio
    async def test_meta_values_round_trip_by_namespace(self, open_backend: OpenBackend) -> None:
        async with self.opened(open_backend) as backend:
            await backend.store_batch(
                [
                    PutMeta("locks", "orders", (2**53 - 1).to_bytes(8, "big")),
                    PutMeta("locks", "gone", b"x"),
                    PutMeta("counters", "orders", b"\x00"),
                    PutMeta("seq", "", b""),
                ]
            )
            await backend.store_batch([PutMeta("locks", "gone", None), PutMeta("x", "y", None)])
        async with self.opened(open_backend) as backend:
            assert await backend.load_meta("locks") == {"orders": (2**53 - 1).to_bytes(8, "big")}
            assert await backend.load_meta("counters") == {"orders": b"\x00"}
            assert await backend.load_meta("seq") == {"": b""}
            assert await backend.load_meta("x") == {}

    # --- atomicity and errors ----------------------------------------------------------

    @pytest.mark.anyio
    async def test_a_map_keeps_its_kind(self, open_backend: OpenBackend) -> None:
        async with self.opened(open_backend) as backend:
            await backend.store_batch([PutRecord("m", "k", LWWRecord(1, ts(1)))])
            for change in (
                AddORRecord("m", "k", or_record(1, ts(2))),
                RemoveORTag("m", str(ts(2))),
                PruneORTag("m", str(ts(2))),
            ):
                with pytest.raises(MapKindError, match="'m'"):
                    await backend.store_batch([change])
            with pytest.raises(MapKindError, match="'o'"):
                await backend.store_batch(
                    [
                        AddORRecord("o", "k", or_record(1, ts(2))),
                        PutRecord("o", "k", LWWRecord(1, ts(3))),
                    ]
                )
            assert await backend.list_maps() == [MapInfo("m", "lww")]

    @pytest.mark.anyio
    async def test_a_failing_batch_writes_nothing(self, open_backend: OpenBackend) -> None:
        async with self.opened(open_backend) as backend:
            await backend.store_batch([PutRecord("m", "k", LWWRecord("before", ts(1)))])
            failing: list[list[Change]] = [
                [  # a kind mismatch after other changes
                    PutRecord("m", "k", LWWRecord("after", ts(2))),
                    PutRecord("new", "k", LWWRecord(1, ts(2))),
                    PutMeta("ns", "k", b"v"),
                    AddORRecord("m", "k", or_record(1, ts(3))),
                ],
                [  # a value msgpack cannot serialize
                    PutRecord("m", "k", LWWRecord("after", ts(2))),
                    PutRecord("new", "bad", LWWRecord(object(), ts(2))),
                ],
                [  # a malformed change
                    PutRecord("m", "k", LWWRecord("after", ts(2))),
                    PutRecord("new", "k", LWWRecord(1, Timestamp(-1, 0, "n"))),
                ],
            ]
            errors = (MapKindError, ValueCodecError, InvalidChangeError)
            for batch, error in zip(failing, errors, strict=True):
                with pytest.raises(error):
                    await backend.store_batch(batch)
            assert await backend.list_maps() == [MapInfo("m", "lww")]
            assert await _lww(backend, "m") == {"k": LWWRecord("before", ts(1))}
            assert await backend.load_meta("ns") == {}

    @pytest.mark.anyio
    async def test_unserializable_values_name_map_and_key(self, open_backend: OpenBackend) -> None:
        async with self.opened(open_backend) as backend:
            with pytest.raises(ValueCodecError, match="key 'bad' of map 'm'") as caught:
                await backend.store_batch([PutRecord("m", "bad", LWWRecord(object(), ts(1)))])
            assert (caught.value.area, caught.value.name, caught.value.key) == ("lww", "m", "bad")
            with pytest.raises(ValueCodecError, match="key 'big' of map 'o'"):
                await backend.store_batch([AddORRecord("o", "big", or_record(2**64, ts(1)))])

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        "change",
        [
            PutRecord("m", 1, LWWRecord(1, ts(1))),  # type: ignore[arg-type]
            PutRecord(None, "k", LWWRecord(1, ts(1))),  # type: ignore[arg-type]
            PutRecord("m", "k", {"value": 1}),  # type: ignore[arg-type]
            PutRecord("m", "k", LWWRecord(1, ts(2**53))),
            PutRecord("m", "k", LWWRecord(1, ts(1, -1))),
            PutRecord("m", "k", LWWRecord(1, ts(1, 0, "a:b"))),
            PutRecord("m", "k", LWWRecord(1, ts(1), ttl_ms=0)),
            PutRecord("m", "k", LWWRecord(1, ts(1), ttl_ms=math.nan)),
            PutRecord("m", "\ud800", LWWRecord(1, ts(1))),
            AddORRecord("m", "k", ORMapRecord(1, ts(1), "not-its-timestamp")),
            AddORRecord("m", "k", LWWRecord(1, ts(1))),  # type: ignore[arg-type]
            RemoveORTag("m", 5),  # type: ignore[arg-type]
            PruneRecord("m", "k", "1:0:n"),  # type: ignore[arg-type]
            PutMeta("ns", "k", "text"),  # type: ignore[arg-type]
            "PutRecord",
        ],
        ids=repr,
    )
    async def test_malformed_changes_are_rejected(
        self, open_backend: OpenBackend, change: Change
    ) -> None:
        async with self.opened(open_backend) as backend:
            with pytest.raises(InvalidChangeError, match="change #1"):
                await backend.store_batch([PutMeta("ns", "k", b"ok"), change])
            assert await backend.list_maps() == []
            assert await backend.load_meta("ns") == {}

    # --- codecs ------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_values_pass_through_the_codecs_with_their_context(
        self, open_backend: OpenBackend
    ) -> None:
        sealed = Sealed()
        codecs = CodecPipeline([("zlib", Zlib()), ("sealed", sealed)])
        record = or_record(["x"], ts(2))
        async with self.opened(open_backend, codecs) as backend:
            await backend.store_batch(
                [
                    PutRecord("m", "k", LWWRecord({"v": 1}, ts(1), 100)),
                    PutRecord("m", "dead", LWWRecord(None, ts(1))),
                    AddORRecord("o", "k", record),
                    PutMeta("ns", "k", b"meta"),
                ]
            )
        assert sorted((c.area, c.name, c.key) for c in sealed.contexts) == [
            ("lww", "m", "k"),
            ("meta", "ns", "k"),
            ("ormap", "o", "k"),
        ]
        async with self.opened(open_backend, codecs) as backend:
            assert await _lww(backend, "m") == {
                "dead": LWWRecord(None, ts(1)),
                "k": LWWRecord({"v": 1}, ts(1), 100),
            }
            assert await _or(backend, "o") == {"k": [record]}
            assert await backend.load_meta("ns") == {"k": b"meta"}

    @pytest.mark.anyio
    async def test_reopening_with_other_codecs_is_an_error(self, open_backend: OpenBackend) -> None:
        async with self.opened(open_backend, CodecPipeline([("zlib", Zlib())])) as backend:
            await backend.store_batch([PutRecord("m", "k", LWWRecord(1, ts(1)))])
        for other in (CodecPipeline(), CodecPipeline([("zlib", Zlib()), ("sealed", Sealed())])):
            with pytest.raises(StorageConfigError, match="zlib"):
                async with self.opened(open_backend, other):
                    pass
        async with self.opened(open_backend, CodecPipeline([("zlib", Zlib())])) as backend:
            assert await _lww(backend, "m") == {"k": LWWRecord(1, ts(1))}

    @pytest.mark.anyio
    async def test_a_value_that_fails_to_decode_names_codec_map_and_key(
        self, open_backend: OpenBackend
    ) -> None:
        async with self.opened(open_backend, CodecPipeline([("sealed", Sealed())])) as backend:
            await backend.store_batch(
                [PutRecord("m", "k", LWWRecord(1, ts(1))), PutMeta("ns", "mk", b"v")]
            )
        async with self.opened(open_backend, CodecPipeline([("sealed", FailingDecode())])) as b:
            with pytest.raises(ValueCodecError, match=r"codec 'sealed'.*key material") as caught:
                await b.load_map("m")
            assert "key 'k' of map 'm'" in str(caught.value)
            with pytest.raises(ValueCodecError, match="key 'mk' of meta namespace 'ns'"):
                await b.load_meta("ns")

    # --- re-encoding in place (`RecodableBackend`, optional) ---------------------------

    @asynccontextmanager
    async def recodable(
        self, open_backend: OpenBackend, codecs: CodecPipeline | None = None
    ) -> AsyncIterator[RecodableBackend]:
        async with self.opened(open_backend, codecs) as backend:
            if not isinstance(backend, RecodableBackend):
                pytest.skip(f"{type(backend).__name__} is not a RecodableBackend")
            yield backend

    @pytest.mark.anyio
    async def test_scan_values_returns_every_value_once_in_order_across_pages(
        self, open_backend: OpenBackend
    ) -> None:
        sealed = Sealed()
        async with self.recodable(open_backend, CodecPipeline([("sealed", sealed)])) as backend:
            await backend.store_batch(
                [PutRecord(m, k, LWWRecord(f"{m}/{k}", ts(1))) for m in ("b", "a") for k in KEYS]
                + [PutRecord("a", "dead", LWWRecord(None, ts(1)))]
                + [AddORRecord("o", k, or_record(k, ts(i + 1))) for i, k in enumerate(KEYS)]
                + [AddORRecord("o", "k", or_record("second", ts(99)))]
                + [PutMeta("ns", k, k.encode()) for k in KEYS]
            )
            total = await backend.count_values()
            seen: list[StoredValue] = []
            after = None
            while page := await backend.scan_values(after, 3):
                assert len(page) <= 3
                seen += page
                after = page[-1]
        assert total == len(seen) == 2 * len(KEYS) + len(KEYS) + 1 + len(KEYS)
        positions = [value.position() for value in seen]
        assert positions == sorted(positions)
        assert len(set(positions)) == len(positions)
        codecs = CodecPipeline([("sealed", Sealed())])
        decoded = {
            (v.context.area, v.context.name, v.context.key, v.tag): codecs.decode(v.data, v.context)
            for v in seen
        }
        assert decoded[("lww", "a", "", None)] == msgspec.msgpack.encode("a/")
        assert decoded[("ormap", "o", "k", str(ts(99)))] == msgspec.msgpack.encode("second")
        assert decoded[("meta", "ns", "emoji 😀", None)] == "emoji 😀".encode()
        assert ("lww", "a", "dead", None) not in decoded  # tombstones hold no value

    @pytest.mark.anyio
    async def test_replace_values_swaps_only_bytes_still_stored(
        self, open_backend: OpenBackend
    ) -> None:
        plain = CodecPipeline()  # no codecs: the stored bytes are the values' msgpack
        async with self.recodable(open_backend, plain) as backend:
            await backend.store_batch(
                [
                    PutRecord("m", "k", LWWRecord("old", ts(1))),
                    PutRecord("m", "raced", LWWRecord("old", ts(1))),
                    AddORRecord("o", "k", or_record("old", ts(1))),
                    PutMeta("ns", "k", b"old"),
                ]
            )
            scanned = await backend.scan_values(None, 100)
            await backend.store_batch([PutRecord("m", "raced", LWWRecord("newer", ts(2)))])
            new = {value.context.area: msgspec.msgpack.encode("new") for value in scanned} | {
                "meta": b"new"
            }
            replaced = await backend.replace_values(
                [(value, new[value.context.area]) for value in scanned]
            )
            assert replaced == 3  # the raced value was rewritten in between: left alone
        async with self.opened(open_backend, plain) as backend:
            assert await _lww(backend, "m") == {
                "k": LWWRecord("new", ts(1)),
                "raced": LWWRecord("newer", ts(2)),
            }
            assert await _or(backend, "o") == {"k": [or_record("new", ts(1))]}
            assert await backend.load_meta("ns") == {"k": b"new"}

    # --- the writer over this backend: restart durability ------------------------------

    @pytest.mark.anyio
    async def test_10000_keys_written_through_the_writer_survive_a_restart(
        self, open_backend: OpenBackend
    ) -> None:
        def record(i: int) -> LWWRecord:
            value = None if i % 97 == 0 else {"i": i, "f": i / 7, "s": f"value {i}"}
            ttl = None if i % 3 else (i + 1 if i % 2 else i + 0.5)
            return LWWRecord(value, ts(1_700_000_000_000 + i // 10, i % 10, f"node-{i % 4}"), ttl)

        expected = {f"key-{i:05}": record(i) for i in range(10_000)}
        keys = list(expected)
        commits = []
        backend = open_backend(None)
        await backend.initialize()
        async with StorageWriter(backend, max_batch=1000) as writer:

            async def submitter(start: int) -> None:
                for first in range(start, len(keys), 500):  # 20 submitters, 10 keys each time
                    batch = [PutRecord("m", k, expected[k]) for k in keys[first : first + 10]]
                    commits.append(await writer.submit(batch))

            async with anyio.create_task_group() as tg:
                for start in range(0, 500, 10):
                    tg.start_soon(submitter, start)
            for commit in commits:
                await commit.wait()
            assert writer.transactions < len(commits)
        await backend.close()
        assert len(commits) == 1000
        async with self.opened(open_backend) as reopened:
            snapshot = await reopened.load_map("m")
        assert isinstance(snapshot, LWWSnapshot)
        assert snapshot.records == expected
        assert exact(snapshot.records) == exact(expected)


async def _lww(backend: StorageBackend, name: str) -> dict[str, LWWRecord]:
    snapshot = await backend.load_map(name)
    assert isinstance(snapshot, LWWSnapshot)
    return snapshot.records


async def _or(backend: StorageBackend, name: str) -> dict[str, list[ORMapRecord]]:
    snapshot = await backend.load_map(name)
    assert isinstance(snapshot, ORSnapshot)
    return snapshot.records
