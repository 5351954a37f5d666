"""The README's ten-line client example works as written (against a local server)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from topgun.testing import local_server

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_readme_client_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    section = README.read_text().split("## The Python client in ten lines", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    source = match.group(1)
    code_lines = [line for line in source.splitlines() if line.strip()]
    assert len(code_lines) <= 10
    body, run = source.rstrip().rsplit("\n", 1)
    assert run.startswith("anyio.run(main,")
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(body, "README.md", "exec", dont_inherit=True), namespace)
    monkeypatch.chdir(tmp_path)  # SQLiteStore("app.db") lands here
    async with local_server() as server:
        await namespace["main"](server.url, server.token())
    assert "('t1', {'title': 'Try topgun', 'done': False})" in capsys.readouterr().out
    assert (tmp_path / "app.db").exists()
