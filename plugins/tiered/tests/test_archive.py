"""The archive tier: maps moved into compressed segments with a manifest, restored byte for
byte on demand or on first use, through the wrapper and through a running server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from topgun_tiered import (
    Archive,
    ArchiveCorruptError,
    DirectoryStore,
    TieredBackend,
    TieredOptions,
)

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import Query, QueryResp, QuerySub, QuerySubPayload, SyncInit, SyncRespRoot
from topgun.storage import (
    AddORRecord,
    CodecContext,
    CodecPipeline,
    LWWSnapshot,
    MapInfo,
    PutRecord,
    RemoveORTag,
    SQLiteBackend,
    StorageConfigError,
    open_storage,
)

pytestmark = pytest.mark.anyio

T = 1_700_000_000_000


def ts(millis: int, counter: int = 0) -> Timestamp:
    return Timestamp(millis, counter, "n1")


LWW_CHANGES = [
    PutRecord("people", "ada", LWWRecord({"name": "Ada", "born": 1815, "ratio": 1.0}, ts(T))),
    PutRecord("people", "bytes", LWWRecord(b"\x00\xff raw", ts(T, 1))),
    PutRecord("people", "int-vs-float", LWWRecord([1, 1.0, True, None, "é"], ts(T, 2))),
    PutRecord("people", "ttl", LWWRecord("short-lived", ts(T, 3), 60_000)),
    PutRecord("people", "gone", LWWRecord(None, ts(T, 4))),
]
OR_CHANGES = [
    AddORRecord("tags", "t", ORMapRecord("red", ts(T, 5), str(ts(T, 5)))),
    AddORRecord("tags", "t", ORMapRecord({"hue": 1}, ts(T, 6), str(ts(T, 6)))),
    RemoveORTag("tags", str(ts(T, 7)), "t"),
    RemoveORTag("tags", str(ts(T, 8)), None),
]


def open_tiered(data_dir: Path, clock: Any = None, **options: Any) -> TieredBackend:
    store = DirectoryStore(data_dir / "archive")
    kwargs = {} if clock is None else {"clock": clock}
    return TieredBackend(
        SQLiteBackend(data_dir / "topgun.db", synchronous="normal"),
        TieredOptions(**options),
        Archive(store),
        **kwargs,
    )


async def filled(data_dir: Path, **options: Any) -> TieredBackend:
    backend = open_tiered(data_dir, **options)
    await backend.initialize()
    await backend.store_batch([*LWW_CHANGES, *OR_CHANGES])
    return backend


async def test_archive_then_restore_round_trips_byte_for_byte(tmp_path: Path) -> None:
    backend = await filled(tmp_path)
    before = {n: msgspec.msgpack.encode(await backend.load_map(n)) for n in ("people", "tags")}
    people = await backend.archive_map("people")
    tags = await backend.archive_map("tags")
    assert (people.kind, people.records) == ("lww", 5)
    assert (tags.kind, tags.records) == ("ormap", 4)
    inner = await backend.inner.load_map("people")
    assert isinstance(inner, LWWSnapshot)
    assert inner.records == {}
    assert await backend.list_maps() == [MapInfo("people", "lww"), MapInfo("tags", "ormap")]
    assert await backend.archived_maps() == {"people": "lww", "tags": "ormap"}
    segment = tmp_path / "archive" / people.segment
    assert segment.stat().st_size == people.stored_bytes
    assert (tmp_path / "archive" / "manifest.json").is_file()
    await backend.close()

    again = open_tiered(tmp_path)  # the manifest outlives the process
    await again.initialize()
    assert await again.archived_maps() == {"people": "lww", "tags": "ormap"}
    done: list[int] = []
    assert await again.restore("people", done.append) == 5
    assert sum(done) == 5
    assert await again.restore("people") == 0  # not archived any more
    assert msgspec.msgpack.encode(await again.load_map("people")) == before["people"]
    assert msgspec.msgpack.encode(await again.load_map("tags")) == before["tags"]  # on read
    assert await again.archived_maps() == {}
    assert not segment.exists()
    assert list((tmp_path / "archive" / "segments").iterdir()) == []
    await again.close()


async def test_keys_reads_and_writes_of_an_archived_map_restore_it_first(
    tmp_path: Path,
) -> None:
    backend = await filled(tmp_path)
    await backend.archive_map("people")
    found = await backend.load_keys("people", ["ada"])
    assert isinstance(found, LWWSnapshot)
    assert found.records["ada"].value["name"] == "Ada"
    assert await backend.archived_maps() == {}
    await backend.archive_map("people")
    newer = LWWRecord("Ada L.", ts(T + 5))
    await backend.store_batch([PutRecord("people", "ada", newer), *LWW_CHANGES[:1]])
    restored = await backend.load_map("people")
    assert isinstance(restored, LWWSnapshot)
    assert restored.records["ada"] == newer
    assert len(restored.records) == 5
    await backend.archive_map("people")
    await backend.delete("people", ["ada"])
    gone = await backend.load_map("people")
    assert isinstance(gone, LWWSnapshot)
    assert "ada" not in gone.records
    await backend.close()


async def test_a_damaged_segment_or_manifest_is_an_error_and_loses_nothing(
    tmp_path: Path,
) -> None:
    backend = await filled(tmp_path)
    info = await backend.archive_map("people")
    segment = tmp_path / "archive" / info.segment
    good = segment.read_bytes()
    segment.write_bytes(good[:-3] + b"xyz")
    with pytest.raises(ArchiveCorruptError, match="is damaged"):
        await backend.load_map("people")
    segment.unlink()
    with pytest.raises(ArchiveCorruptError, match="is missing"):
        await backend.restore("people")
    assert await backend.archived_maps() == {"people": "lww"}
    segment.write_bytes(good)
    assert await backend.restore("people") == 5
    with pytest.raises(StorageConfigError, match="not stored"):
        await backend.archive_map("nothing")
    await backend.archive_map("people")
    with pytest.raises(StorageConfigError, match="archived already"):
        await backend.archive_map("people")
    await backend.close()
    (tmp_path / "archive" / "manifest.json").write_text("{not json")
    broken = open_tiered(tmp_path)
    with pytest.raises(ArchiveCorruptError, match=r"manifest .* is damaged"):
        await broken.initialize()


async def test_idle_maps_are_those_untouched_for_the_configured_age(tmp_path: Path) -> None:
    now = [T / 1000 + 3600]  # an hour after the writes
    backend = open_tiered(tmp_path, clock=lambda: now[0], archive_after="2h")
    await backend.initialize()
    await backend.store_batch([*LWW_CHANGES, *OR_CHANGES])
    await backend.store_batch([PutRecord("fresh", "k", LWWRecord(1, ts(T + 3_000_000)))])
    assert await backend.idle_maps() == []
    assert await backend.idle_maps(30 * 60 * 1000) == ["people", "tags"]
    now[0] += 7200
    assert await backend.idle_maps() == ["people", "tags", "fresh"]
    await backend.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"budget": "lots"}, "a size is"),
        ({"budget": 0}, "must be positive"),
        ({"low_water": 0.9}, "water marks"),
        ({"archive_after": "soon"}, "archive_after"),
        ({"archive_interval": "often"}, "archive_interval"),
        ({"archive_interval": 0}, "archive_interval must be positive"),
        ({"segment_keys": 0}, "segment_keys must be at least 1"),
        ({"compression_level": 30}, "compression_level"),
        ({"archive": "s3://"}, "names no bucket"),
        ({"bogus": 1}, "bogus"),
    ],
)
async def test_bad_options_are_config_errors_naming_them(
    tmp_path: Path, kit: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(StorageConfigError, match=message):
        open_storage(
            kit.plugin_manager(),
            data_dir=tmp_path,
            backend="memory",
            wrappers=["tiered"],
            wrapper_options={"tiered": options},
        )
    with pytest.raises(StorageConfigError, match="not in the wrapper list"):
        open_storage(
            kit.plugin_manager(), data_dir=tmp_path, backend="memory", wrapper_options={"x": {}}
        )


async def test_a_server_restores_an_archived_map_when_a_request_names_it(
    tmp_path: Path, kit: Any
) -> None:
    config = kit.tiered_config(tmp_path, budget="64MiB")
    async with kit.running(config) as first:
        client = await first.login()
        await kit.write_rows(client, "old", range(50))
        await client.send(SyncInit(map_name="old"))
        root = (await client.receive_until(SyncRespRoot))[0].payload.root_hash
    backend = open_storage(
        kit.plugin_manager(),
        data_dir=tmp_path,
        backend="sqlite",
        wrappers=["tiered"],
        wrapper_options={"tiered": {}},
    )
    assert isinstance(backend, TieredBackend)
    await backend.initialize()
    await backend.archive_map("old")
    await backend.close()

    async with kit.running(config) as second:
        maps = second.server.maps
        assert maps.kind("old") == "lww"
        assert maps.lww("old") is None
        client = await second.login()
        await client.send(SyncInit(map_name="old"))
        assert (await client.receive_until(SyncRespRoot))[0].payload.root_hash == root
        assert maps.lww("old") is not None
        query = QuerySub(payload=QuerySubPayload(query_id="q", map_name="old", query=Query()))
        await client.send(query)
        response, _ = await client.receive_until(QueryResp)
        assert [r.key for r in response.payload.results] == [f"k{i:05}" for i in range(50)]
        assert isinstance(second.server.backend, TieredBackend)
        assert await second.server.backend.archived_maps() == {}


class Sealed:
    """A stand-in for an encrypting codec: reverses the bytes and binds them to their place
    (NOT secure)."""

    def encode_for(self, data: bytes, context: CodecContext) -> bytes:
        return b"SEALED:" + context.associated_data() + b":" + data[::-1]

    def decode_for(self, data: bytes, context: CodecContext) -> bytes:
        prefix = b"SEALED:" + context.associated_data() + b":"
        if not data.startswith(prefix):
            raise ValueError("sealed for another place")
        return data[len(prefix) :][::-1]


async def test_segments_pass_through_the_storage_codecs(tmp_path: Path) -> None:
    codecs = CodecPipeline([("sealed", Sealed())])
    backend = TieredBackend(
        SQLiteBackend(tmp_path / "topgun.db", codecs=codecs, synchronous="normal"),
        TieredOptions(),
        Archive(DirectoryStore(tmp_path / "archive"), codecs=codecs),
    )
    await backend.initialize()
    secret = LWWRecord({"card": "4111-1111"}, ts(T))
    await backend.store_batch([PutRecord("vault", "k", secret)])
    info = await backend.archive_map("vault")
    stored = (tmp_path / "archive" / info.segment).read_bytes()
    assert stored.startswith(b"SEALED:")
    await backend.close()
    moved = tmp_path / "archive" / info.segment
    again = TieredBackend(
        SQLiteBackend(tmp_path / "topgun.db", codecs=codecs, synchronous="normal"),
        TieredOptions(),
        Archive(DirectoryStore(tmp_path / "archive"), codecs=codecs),
    )
    await again.initialize()
    restored = await again.load_map("vault")
    assert isinstance(restored, LWWSnapshot)
    assert restored.records["k"] == secret
    assert not moved.exists()
    await again.close()
