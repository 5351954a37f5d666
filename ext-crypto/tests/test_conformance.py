"""The storage contract holds on SQLite and memory with every value compressed and
encrypted: each stored kind (LWW records, OR-Map records, meta values) round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from topgun.storage import CodecPipeline, MemoryBackend, MemoryStore, SQLiteBackend
from topgun.storage.conformance import BackendConformance, OpenBackend
from topgun_compress import ZstdCodec
from topgun_crypto import AesGcmCodec


def sealed_pipeline() -> CodecPipeline:
    """compress, then encrypt: what `[storage] codecs = ["compress", "crypto"]` builds."""
    return CodecPipeline(
        [("compress", ZstdCodec(min_size=8)), ("crypto", AesGcmCodec.from_key(b"k" * 32))]
    )


class TestSQLiteCompressedAndEncrypted(BackendConformance):
    @pytest.fixture
    def open_backend(self, tmp_path: Path) -> OpenBackend:
        pipeline = sealed_pipeline()

        def open_backend(codecs: CodecPipeline | None = None) -> SQLiteBackend:
            return SQLiteBackend(
                tmp_path / "topgun.db", codecs=codecs or pipeline, synchronous="normal"
            )

        return open_backend


class TestMemoryCompressedAndEncrypted(BackendConformance):
    @pytest.fixture
    def open_backend(self) -> OpenBackend:
        store, pipeline = MemoryStore(), sealed_pipeline()

        def open_backend(codecs: CodecPipeline | None = None) -> MemoryBackend:
            return MemoryBackend(codecs=codecs or pipeline, store=store)

        return open_backend
