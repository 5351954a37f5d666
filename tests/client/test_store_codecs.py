"""The client's SQLite store with the extensions' codecs: compress, then encrypt, with a key
the application holds. Nothing readable reaches the file; the wrong key cannot open it."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from topgun.client import Backoff, SQLiteStore, TopGunClient
from topgun.storage import CodecPipeline, StorageError
from topgun_compress import ZstdCodec
from topgun_crypto import AesGcmCodec, generate_key

pytestmark = pytest.mark.anyio

OFFLINE = "ws://127.0.0.1:9"
"""Nothing listens there: the client works offline, writes stay in its store."""
IDLE = Backoff(initial=60, max_delay=60, jitter=0)
SECRET_TEXT = "the launch code is 0000"


def codecs(key: bytes) -> CodecPipeline:
    return CodecPipeline(
        [("compress", ZstdCodec(min_size=1)), ("crypto", AesGcmCodec.from_key(key))]
    )


async def write_offline(path: Path, key: bytes) -> None:
    store = SQLiteStore(path, codecs=codecs(key))
    async with TopGunClient(OFFLINE, token="t", store=store, backoff=IDLE) as client:
        client.map("notes").set("n1", {"text": SECRET_TEXT})
        client.ormap("tags").add("n1", SECRET_TEXT)
        await client.flush()


async def test_an_encrypted_client_store_holds_no_plaintext_and_reads_back(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "client.db"
    await write_offline(path, key)
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert SECRET_TEXT.encode() not in stored  # values, OR records and the oplog's copies
    async with TopGunClient(
        OFFLINE, token="t", store=SQLiteStore(path, codecs=codecs(key)), backoff=IDLE
    ) as again:
        assert again.map("notes").get("n1") == {"text": SECRET_TEXT}
        assert again.ormap("tags").values("n1") == [SECRET_TEXT]
        assert again.pending_writes == 2  # the unsent writes survived, still queued


async def test_the_wrong_key_or_no_codecs_cannot_open_it(tmp_path: Path) -> None:
    path = tmp_path / "client.db"
    await write_offline(path, generate_key())
    for store in (SQLiteStore(path, codecs=codecs(generate_key())), SQLiteStore(path)):
        with anyio.fail_after(30), pytest.raises(StorageError):
            async with TopGunClient(OFFLINE, token="t", store=store, backoff=IDLE):
                pass
