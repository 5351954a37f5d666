"""Fixtures for the compression tests: the realistic JSON corpus of bench/json_corpus.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def json_corpus() -> ModuleType:
    """`bench/json_corpus.py`, loaded from its file (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("json_corpus", ROOT / "bench" / "json_corpus.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
