"""The in-memory connection (topgun/server/inmemory.py)."""

from __future__ import annotations

import anyio
import pytest

from topgun.server import ConnectionClosed, InMemoryTransport

pytestmark = pytest.mark.anyio


async def test_the_transport_hands_frames_over_then_the_close() -> None:
    transport = InMemoryTransport("peer:1")
    assert (transport.is_open, transport.remote_address) == (True, "peer:1")
    await transport.send(b"one")
    await transport.close(4001, "bye")
    await transport.close(1000, "again")  # the first close wins
    assert not transport.is_open
    assert await transport.outbox.receive() == b"one"
    with pytest.raises(anyio.EndOfStream):
        await transport.outbox.receive()
    assert (transport.close_code, transport.close_reason) == (4001, "bye")
    transport.outbox.close()
    assert str(ConnectionClosed(4001, "bye")) == "closed by the server: 4001 bye"
