"""docs/spec/protocol-v2.md publishes the normative PROTOCOL.md unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NORMATIVE = ROOT.parent / "shared" / "PROTOCOL.md"
PUBLISHED = ROOT / "docs" / "spec" / "protocol-v2.md"


def test_published_spec_equals_the_normative_one() -> None:
    if not NORMATIVE.is_file():
        pytest.skip(f"the normative spec ({NORMATIVE}) is not next to this checkout")
    assert PUBLISHED.read_text(encoding="utf-8") == NORMATIVE.read_text(encoding="utf-8")
