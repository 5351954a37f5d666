"""The memory backend: the conformance suite, plus what is particular to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from topgun.crdt import LWWRecord, Timestamp
from topgun.storage import (
    BackendConfig,
    MemoryBackend,
    MemoryStore,
    PutRecord,
    StorageConfigError,
)
from topgun.storage.codecs import CodecPipeline
from topgun.storage.conformance import BackendConformance, OpenBackend
from topgun.storage.memory import open_memory


class TestMemoryBackend(BackendConformance):
    @pytest.fixture
    def open_backend(self) -> OpenBackend:
        store = MemoryStore()

        def open_backend(codecs: CodecPipeline | None = None) -> MemoryBackend:
            return MemoryBackend(codecs=codecs, store=store)

        return open_backend


@pytest.mark.anyio
async def test_each_factory_built_backend_starts_empty(tmp_path: Path) -> None:
    first = open_memory(BackendConfig(tmp_path))
    await first.initialize()
    await first.store_batch([PutRecord("m", "k", LWWRecord(1, Timestamp(1, 0, "n")))])
    second = open_memory(BackendConfig(tmp_path))
    await second.initialize()
    assert await second.list_maps() == []
    assert [m.name for m in await first.list_maps()] == ["m"]


def test_the_factory_takes_no_options(tmp_path: Path) -> None:
    with pytest.raises(StorageConfigError, match=r"'memory'.*unknown field `file`"):
        open_memory(BackendConfig(tmp_path, options={"file": "x.db"}))
