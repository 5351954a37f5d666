"""`Server` (topgun/server/server.py): start, readiness, connections, shutdown, restart."""

from __future__ import annotations

import pytest

from topgun.protocol import AuthRequired, Ping, Pong

pytestmark = pytest.mark.anyio


async def test_smoke(harness) -> None:
    client = await harness.connect()
    assert isinstance(await client.receive(), AuthRequired)
    await client.send(Ping(timestamp=5))
    pong = await client.receive()
    assert isinstance(pong, Pong)
    authed = await harness.login()
    await authed.send(Ping(timestamp=7))
    assert isinstance(await authed.receive(), Pong)
