"""Fixtures for the audit log tests: a log written for real, and ways to read its lines."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from topgun_audit import AuditLog

TIME = "2026-11-26T06:00:00.000Z"


def write_log(
    directory: Path, count: int, *, max_file_bytes: int = 64 * 1024 * 1024, first: int = 0
) -> None:
    """`count` write entries through a real `AuditLog` (opened, drained, closed)."""
    log = AuditLog(directory, max_file_bytes=max_file_bytes, queue_size=64, fsync=False)
    log.open()
    try:
        for n in range(first, first + count):
            log.put_blocking(
                {
                    "event": "write",
                    "time": "2026-11-26T06:00:00.000Z",
                    "map": "todos",
                    "key": f"k{n}",
                }
            )
    finally:
        log.close()


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def entry(raw: bytes) -> dict[str, Any]:
    loaded = json.loads(raw)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "audit"


@pytest.fixture
def written(log_dir: Path) -> Callable[..., Path]:
    """`written(count, max_file_bytes=...)`: the directory of a log with `count` entries."""

    def write(count: int, **options: Any) -> Path:
        write_log(log_dir, count, **options)
        return log_dir

    return write
