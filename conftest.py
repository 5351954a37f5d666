"""Repository-wide pytest settings.

anyio's pytest plugin runs every `@pytest.mark.anyio` test under each installed backend.
trio is installed (the client is tested under it), but the server and most code are tested
on asyncio, so asyncio is the default here; a test module or folder that means to cover
both backends overrides `anyio_backend` (tests/client does).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"
