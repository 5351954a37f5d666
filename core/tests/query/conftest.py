"""Shared data for the query tests: the golden frames and the reference scenario's rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "protocol" / "golden-frames"


def golden_frame(number: str) -> bytes:
    """The bytes of golden frame `number` (e.g. "0076")."""
    (path,) = GOLDEN.glob(f"{number}-*.msgpack")
    return path.read_bytes()


def golden_decoded(number: str) -> dict[str, Any]:
    """The index.json rendering of golden frame `number`."""
    for entry in json.loads((GOLDEN / "index.json").read_text()):
        if entry["file"].startswith(number):
            decoded: dict[str, Any] = entry["decoded"]
            return decoded
    raise LookupError(number)


def items() -> list[tuple[str, dict[str, Any]]]:
    """The rows of golden scenario k: item0..item19, score = i, cat even/odd."""
    return [
        (f"item{i}", {"score": i, "cat": "even" if i % 2 == 0 else "odd", "name": f"n{i}"})
        for i in range(20)
    ]


@pytest.fixture
def item_rows() -> list[tuple[str, dict[str, Any]]]:
    return items()
