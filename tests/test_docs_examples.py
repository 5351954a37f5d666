"""Every ```python block in docs/ runs: documentation examples cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def examples() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for i, match in enumerate(BLOCK.finditer(page.read_text())):
            found.append((f"{page.relative_to(DOCS)}#{i + 1}", match.group(1)))
    return found


@pytest.mark.parametrize(("where", "source"), examples())
def test_docs_example_runs(where: str, source: str) -> None:
    # dont_inherit: run the example as its reader would, without this module's
    # `from __future__ import annotations` (which would leave class annotations as strings).
    exec(compile(source, where, "exec", dont_inherit=True), {"__name__": "docs_example"})
