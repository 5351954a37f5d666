"""The archive on S3-compatible storage (aiobotocore), against moto's standalone server
started by the test on a free port of 127.0.0.1 (a real socket and HTTP)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from topgun_tiered import Archive, S3Store, TieredBackend, TieredOptions

from topgun.crdt import LWWRecord, Timestamp
from topgun.storage import LWWSnapshot, PutRecord, SQLiteBackend, StorageOpenError
from topgun.testing import services_required

pytestmark = pytest.mark.anyio

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server on a free port; skips without moto unless services are required."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        reason = f"moto[server] is not installed ({exc})"
        if services_required():
            pytest.fail(f"{reason} (TOPGUN_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        with socket.create_connection((host, port), timeout=5):
            pass
        yield f"http://{host}:{port}"
    finally:
        server.stop()


async def make_bucket(endpoint: str, bucket: str) -> None:
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", **CREDENTIALS
    ) as client:
        await client.create_bucket(Bucket=bucket)


def s3_store(endpoint: str, url: str) -> S3Store:
    return S3Store.from_url(
        url, endpoint_url=endpoint, region="us-east-1", client_options=CREDENTIALS
    )


async def test_archive_on_s3_round_trips_byte_for_byte(tmp_path: Path, s3_endpoint: str) -> None:
    await make_bucket(s3_endpoint, "cold")
    changes = [
        PutRecord(
            "m", f"k{i}", LWWRecord({"i": i, "blob": bytes([i % 256]) * 50}, Timestamp(i, 0, "n"))
        )
        for i in range(300)
    ]

    def open_backend() -> TieredBackend:
        return TieredBackend(
            SQLiteBackend(tmp_path / "topgun.db", synchronous="normal"),
            TieredOptions(archive="s3://cold/topgun/archive"),
            Archive(s3_store(s3_endpoint, "s3://cold/topgun/archive")),
        )

    backend = open_backend()
    await backend.initialize()
    await backend.store_batch(changes)
    before = msgspec.msgpack.encode(await backend.load_map("m"))
    info = await backend.archive_map("m")
    assert info.records == 300
    assert info.stored_bytes < info.raw_bytes
    store = backend.archive.store
    assert await store.get(info.segment) is not None
    assert await store.get("manifest.json") is not None
    await backend.close()

    again = open_backend()
    await again.initialize()
    assert await again.archived_maps() == {"m": "lww"}
    assert msgspec.msgpack.encode(await again.load_map("m")) == before
    assert await again.archived_maps() == {}
    assert await again.archive.store.get(info.segment) is None
    await again.close()


async def test_archived_keys_on_s3_round_trip_byte_for_byte(
    tmp_path: Path, s3_endpoint: str
) -> None:
    """Key segments on S3: the old half of a live map goes to two segments, `load_map`
    reads them in place, and a read of one key restores only its segment."""
    await make_bucket(s3_endpoint, "keys")
    url = "s3://keys/archive"
    changes = [
        PutRecord("m", f"k{i:03}", LWWRecord({"i": i, "blob": b"x" * i}, Timestamp(i, 0, "n")))
        for i in range(200)
    ]

    def open_backend() -> TieredBackend:
        return TieredBackend(
            SQLiteBackend(tmp_path / "topgun.db", synchronous="normal"),
            TieredOptions(archive=url, segment_keys=50),
            Archive(s3_store(s3_endpoint, url)),
        )

    backend = open_backend()
    await backend.initialize()
    await backend.store_batch(changes)
    before = msgspec.msgpack.encode(await backend.load_map("m"))
    old = await backend.old_keys("m", 100)
    assert len(old) == 100
    first = await backend.archive_keys("m", old[:50])
    second = await backend.archive_keys("m", old[50:])
    assert first is not None
    assert second is not None
    assert await backend.archive.store.get(first.info.segment) is not None
    await backend.close()

    again = open_backend()
    await again.initialize()
    assert len(again.archive.keys["m"]) == 100
    assert msgspec.msgpack.encode(await again.load_map("m")) == before
    found = await again.load_keys("m", ["k007"])
    assert isinstance(found, LWWSnapshot)
    assert found.records["k007"] == changes[7].record
    assert await again.archive.store.get(first.info.segment) is None
    assert set(again.archive.manifest.key_segments) == {second.info.segment}
    assert await again.restore("m") == 50
    assert msgspec.msgpack.encode(await again.load_map("m")) == before
    await again.close()


async def test_a_missing_bucket_is_an_open_error_naming_it(s3_endpoint: str) -> None:
    store = s3_store(s3_endpoint, "s3://no-such-bucket/x")
    with pytest.raises(StorageOpenError, match="s3://no-such-bucket/x/"):
        await store.open()


async def test_the_wrapper_builds_an_s3_store_from_its_options(tmp_path: Path, kit: Any) -> None:
    from topgun.storage import open_storage

    backend = open_storage(
        kit.plugin_manager(),
        data_dir=tmp_path,
        backend="memory",
        wrappers=["tiered"],
        wrapper_options={
            "tiered": {"archive": "s3://bucket/some/prefix", "s3_endpoint_url": "http://x"}
        },
    )
    assert isinstance(backend, TieredBackend)
    store = backend.archive.store
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint_url) == (
        "bucket",
        "some/prefix/",
        "http://x",
    )
