"""The tiered wrapper keeps the storage contract: the conformance suite over it, around
SQLite and around the memory backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from topgun_tiered import Archive, DirectoryStore, TieredBackend, TieredOptions

from topgun.storage import CodecPipeline, MemoryBackend, MemoryStore, SQLiteBackend
from topgun.storage.conformance import BackendConformance


def tiered(inner: Any, archive_dir: Path) -> TieredBackend:
    return TieredBackend(inner, TieredOptions(budget="1MiB"), Archive(DirectoryStore(archive_dir)))


class TestTieredOverSQLite(BackendConformance):
    @pytest.fixture
    def open_backend(self, tmp_path: Path) -> Any:
        def open_backend(codecs: CodecPipeline | None = None) -> TieredBackend:
            return tiered(SQLiteBackend(tmp_path / "data", codecs=codecs), tmp_path / "archive")

        return open_backend


class TestTieredOverMemory(BackendConformance):
    @pytest.fixture
    def open_backend(self, tmp_path: Path) -> Any:
        store = MemoryStore()

        def open_backend(codecs: CodecPipeline | None = None) -> TieredBackend:
            return tiered(MemoryBackend(codecs=codecs, store=store), tmp_path / "archive")

        return open_backend


def test_both_conformance_classes_run_the_whole_suite() -> None:
    """The classes above inherit every test of the suite (none is overridden away)."""
    suite = {name for name in dir(BackendConformance) if name.startswith("test_")}
    assert len(suite) >= 20
    for cls in (TestTieredOverSQLite, TestTieredOverMemory):
        assert {name for name in dir(cls) if name.startswith("test_")} == suite
        assert all(getattr(cls, name) is getattr(BackendConformance, name) for name in suite)
